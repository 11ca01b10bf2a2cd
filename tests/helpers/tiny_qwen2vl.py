"""Tiny Qwen2-VL models for reward tests: same architecture, random weights, built offline.

The tokenizer is a byte-level BPE (Qwen2's pre-tokenizer) trained in memory on
the reward instructions, with Qwen2-VL's special tokens at the end of the vocab
like the real one; the reward tokens are left out, as in the real base tokenizer,
so the adapters must add them. Checkpoints are written as the originals are: a
whole-model state dict in transformers 4.x key layout (``model.*``, ``visual.*``,
``lm_head.*``, ``rm_head.*``) after adding the reward tokens and resizing the
embeddings to ``len(tokenizer)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The Qwen2-VL-Instruct chat template (as shipped in the model's tokenizer/processor files).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
PROMPTS = ["a red cat on the grass", "a blue dog runs in the sky", "the car"]
PATCH, MERGE = 14, 2


def make_tokenizer(extra_special_tokens: tuple[str, ...] = ()):
    """Qwen2 tokenizer with a ~700-token BPE vocab, then Qwen2-VL's specials (+ extra ones)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    from fgrpo.rewards.hpsv3 import instruction
    from fgrpo.rewards.videoalign import prompt_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([instruction(""), prompt_text(""), *PROMPTS, "You are a helpful assistant."], trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # merges as (a, b) pairs is what tokenizers' BPE takes; transformers annotates list[str] only
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,  # pyright: ignore[reportArgumentType]
        extra_special_tokens=QWEN2VL_SPECIALS[1:] + list(extra_special_tokens),
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(tok, vocab_size: int, tie: bool = False):
    from transformers import Qwen2VLConfig

    ids = dict(zip(QWEN2VL_SPECIALS, tok.convert_tokens_to_ids(QWEN2VL_SPECIALS)))
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            # head_dim 16: mrope sections (t, h, w) must sum to head_dim / 2
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            initializer_range=0.2,
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=4,
            patch_size=PATCH,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            initializer_range=0.2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )


def image_processor(pixels: int):
    """The PIL Qwen2-VL image processor with a fixed pixel budget (min = max), as HPSv3 uses."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=PATCH, merge_size=MERGE)


def save_base(path: Path, seed: int = 0, tie: bool = False):
    """Save a base Qwen2-VL folder (weights, config, tokenizer, preprocessor); return the model.

    ``tie``: tied input/output embeddings, as Qwen2-VL-2B has (7B does not).
    """
    from transformers import Qwen2VLForConditionalGeneration

    tok = make_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(tiny_config(tok, len(tok) + 10, tie)).eval()  # vocab > len(tok), as Qwen's
    model.save_pretrained(path)
    tok.save_pretrained(path)
    image_processor(56 * 56).save_pretrained(path)
    return model


def make_reward_model(base, reward_tokens: tuple[str, ...], head: torch.nn.Module, seed: int = 1):
    """The originals' create_model_and_processor: add reward tokens, resize embeddings, attach a float32 head."""
    tok = make_tokenizer(reward_tokens)
    base.resize_token_embeddings(len(tok))
    torch.manual_seed(seed)
    with torch.no_grad():  # distinct trained-like rows for the new tokens
        base.get_input_embeddings().weight[-len(reward_tokens) :] = torch.randn(len(reward_tokens), 64)
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return base, head.float().eval(), tok


def legacy_state_dict(model, head: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole reward model in transformers 4.x keys, as HPSv3.safetensors / VideoReward model.pth hold it."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model.") :]
        elif k.startswith("model.visual."):
            k = k[len("model.") :]
        out[k] = v.clone().contiguous()
    out.update({f"rm_head.{k}": v.clone() for k, v in head.state_dict().items()})
    return out


def reward_at_tokens(model, head, ids, mask, reward_ids, sequential: bool = True, **vision) -> torch.Tensor:
    """Reference readout: transformers' forward + head at the reward tokens -> ``[B, K, N]``.

    ``sequential``: positions 0..L-1, what the originals' forward got on transformers 4.45; otherwise
    transformers 5's 3D M-RoPE positions (from ``mm_token_type_ids``).
    """
    if sequential:
        pos = {"position_ids": torch.arange(ids.shape[1]).expand(3, *ids.shape)}
    else:
        mm = (ids == model.config.image_token_id).int() + 2 * (ids == model.config.video_token_id).int()
        pos = {"mm_token_type_ids": mm}
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False, **pos, **vision).last_hidden_state
        logits = head(hidden.float())
    hit = torch.isin(ids, torch.tensor(reward_ids))
    return logits[hit].view(ids.shape[0], len(reward_ids), -1)


def save_tiny_hpsv3(root: Path):
    """A tiny HPSv3 release: the base folder and ``HPSv3.safetensors`` (whole reward model, 4.x keys).

    Returns (base folder, checkpoint, reference transformers model, reference head, tokenizer).
    """
    from safetensors.torch import save_file

    from fgrpo.rewards.hpsv3 import REWARD_TOKEN

    base = save_base(Path(root) / "Qwen2-VL-7B-Instruct")
    head = torch.nn.Sequential(
        torch.nn.Linear(64, 1024),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.05),
        torch.nn.Linear(1024, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 2),
    )
    model, head, tok = make_reward_model(base, (REWARD_TOKEN,), head)
    save_file(legacy_state_dict(model, head), Path(root) / "HPSv3.safetensors")
    return str(Path(root) / "Qwen2-VL-7B-Instruct"), str(Path(root) / "HPSv3.safetensors"), model, head, tok


# A VideoReward model_config.json for the tiny model: 56x56..56x84-pixel frames (the release: 128*28*28 and more).
VIDEOALIGN_NORM = {"VQ_mean": 0.1, "VQ_std": 2.0, "MQ_mean": -0.2, "MQ_std": 0.5, "TA_mean": 0.3, "TA_std": 1.5}
VIDEOALIGN_CONFIG = {
    "data_config": {
        "fps": 2.0,
        "num_frames": None,
        "max_frame_pixels": 56 * 84,
        "eval_dim": ["VQ", "MQ", "TA"],
        "prompt_template_type": "detailed_special",
        "sample_type": "uniform",
    },
    "model_config": {"output_dim": 1, "use_special_tokens": True, "reward_token": "special"},
    "inference_config": VIDEOALIGN_NORM,
}


def save_tiny_videoalign(root: Path):
    """A tiny VideoReward release: the base folder (tied embeddings, as Qwen2-VL-2B) and a release
    folder with model_config.json and two checkpoint-<step>/model.pth, the older with the head negated
    (only the latest step may be used).

    Returns (base folder, release folder, reference transformers model, reference head).
    """
    from fgrpo.rewards.videoalign import REWARD_TOKENS

    base = save_base(Path(root) / "Qwen2-VL-2B-Instruct", tie=True)
    model, head, _ = make_reward_model(base, REWARD_TOKENS, torch.nn.Linear(64, 1, bias=False))
    release = Path(root) / "VideoReward"
    for step, scale in ((3, -1.0), (11352, 1.0)):
        (release / f"checkpoint-{step}").mkdir(parents=True)
        state = legacy_state_dict(model, head)
        state["rm_head.weight"] = state["rm_head.weight"] * scale
        torch.save(state, release / f"checkpoint-{step}" / "model.pth")
    (release / "model_config.json").write_text(json.dumps(VIDEOALIGN_CONFIG))
    return str(Path(root) / "Qwen2-VL-2B-Instruct"), str(release), model, head
