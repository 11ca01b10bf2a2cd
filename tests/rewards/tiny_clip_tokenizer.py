"""A tiny CLIP BPE tokenizer built in memory (no hub access) for reward tests."""

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
