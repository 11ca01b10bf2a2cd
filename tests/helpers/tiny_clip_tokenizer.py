"""A tiny CLIP BPE tokenizer and CLIPModel built in memory (no hub access), for reward tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_clip_tokenizer(words: Sequence[str], specials_last: bool = False):
    """CLIPTokenizer whose vocabulary is a-z plus ``words`` (with the merges spelling them).

    ``specials_last`` puts BOS/EOS at the two highest ids, as in real CLIP
    vocabularies (49406, 49407), where open_clip pools text at ``argmax(token id)``.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {} if specials_last else {BOS: 0, EOS: 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    for w in words:
        vocab.setdefault(w + "</w>", len(vocab))
    # Merges that build every word out of its characters.
    merges, seen = [], set()
    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[-2], pieces[-1])
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = pieces[:-2] + [pair[0] + pair[1]]
    if specials_last:
        vocab[BOS] = len(vocab)
        vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def save_tiny_clip(path, words: Sequence[str], seed: int = 0) -> str:
    """A random tiny CLIPModel + CLIPProcessor (32 px images) saved as a transformers folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = tiny_clip_tokenizer(words)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(path)
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(path)
    return str(path)
