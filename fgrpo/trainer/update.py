"""The optimizer side of a policy update: AdamW over the trained parameters, LR warm-up, global
gradient-norm clipping over every shard. Evaluation never builds one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fgrpo.distributed.grad_norm import clip_grad_norm, local_state_bytes
from fgrpo.recipe.config import OptimConfig


@dataclass
class PolicyUpdate:
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    grad_clip: float

    @classmethod
    def adamw(cls, params: dict[str, torch.nn.Parameter], o: OptimConfig) -> "PolicyUpdate":
        optimizer = torch.optim.AdamW(params.values(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        warm = max(1, o.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
        return cls(params, optimizer, schedule, o.grad_clip)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def clip(self) -> torch.Tensor:
        """Clip the global gradient norm (FSDP2 has already averaged gradients over the dp ranks)."""
        return clip_grad_norm(list(self.params.values()), self.grad_clip)

    def step(self) -> None:
        # A trained parameter no transition reached (a two-expert model's expert none of the step's
        # SDE steps belongs to) steps with a zero gradient, as on a rank that ran it on a dummy row
        # only (fgrpo.models.wan.experts): every trained parameter then has AdamW state from the
        # first step, so checkpoints hold all of it and a resumed run continues exactly.
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.lr_schedule.step()

    @property
    def lr(self) -> float:
        return float(self.lr_schedule.get_last_lr()[0])  # torch's stubs allow a tensor lr

    def state_bytes(self) -> int:
        """Bytes this rank holds for trained parameters, their gradients and the optimizer state."""
        return local_state_bytes(self.params, self.optimizer)
