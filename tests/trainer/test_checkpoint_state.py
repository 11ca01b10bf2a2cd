"""Taking a checkpoint's state before the first optimizer step changes nothing about training.

torch's get_state_dict makes an unstepped optimizer's state with a zero-gradient step, which left
AdamW's step counter at 1 and shrank the run's first real update to 0.74x (a best-gold checkpoint at
step 0 did that to recipes/miniature.py). fgrpo.trainer.checkpoint.model_and_optimizer_state puts it
back, so a run that saved at step 0, and a run resumed from that save, train bitwise like one that
never saved.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

from fgrpo.trainer.checkpoint import model_and_optimizer_state


def _model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)  # a frozen weight, left out of the state as in LoRA runs
    trained = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trained, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_state_taken_before_the_first_step_leaves_training_as_it_was():
    plain, plain_opt = _model_and_optimizer()
    saved, saved_opt = _model_and_optimizer()
    model_sd, optim_sd = model_and_optimizer_state(saved, saved_opt)
    assert set(model_sd) == {"0.weight", "2.weight", "2.bias"}  # the frozen bias is not saved
    assert all(float(s["step"]) == 0 for s in optim_sd["state"].values())  # the saved copy is fresh too
    assert all(float(s["step"]) == 0 for s in saved_opt.state.values())

    _train(plain, plain_opt)
    _train(saved, saved_opt)
    for a, b in zip(_weights(plain), _weights(saved), strict=True):
        assert torch.equal(a, b)
    assert all(float(s["step"]) == 3 for s in saved_opt.state.values())


def test_resuming_from_a_state_taken_at_step_zero_trains_as_an_unsaved_run():
    plain, plain_opt = _model_and_optimizer()
    _, optim_sd = model_and_optimizer_state(*_model_and_optimizer())
    resumed, resumed_opt = _model_and_optimizer()
    set_state_dict(
        resumed,
        resumed_opt,
        model_state_dict={},
        optim_state_dict=optim_sd,
        options=StateDictOptions(ignore_frozen_params=True, strict=False),
    )
    _train(plain, plain_opt)
    _train(resumed, resumed_opt)
    for a, b in zip(_weights(plain), _weights(resumed), strict=True):
        assert torch.equal(a, b)


def test_a_stepped_optimizer_keeps_its_counters():
    model, optimizer = _model_and_optimizer()
    _train(model, optimizer, steps=2)
    _, optim_sd = model_and_optimizer_state(model, optimizer)
    assert all(float(s["step"]) == 2 for s in optim_sd["state"].values())
    assert all(float(s["step"]) == 2 for s in optimizer.state.values())
