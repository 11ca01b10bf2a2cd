"""Prompt files: plain text or JSONL (extra fields kept), the held-out split, clear errors."""

import pytest

from fgrpo.data.prompts import read_prompt_records, read_prompts, resolve_prompt_file, split_prompts


def test_plain_text_one_prompt_per_line(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a red car\n\n  a blue kite  \n")
    assert read_prompts(f) == ["a red car", "a blue kite"]
    assert read_prompt_records(f) == [{"prompt": "a red car"}, {"prompt": "a blue kite"}]


def test_jsonl_keeps_other_fields(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a red car", "id": 7, "category": "vehicles"}\n{"prompt": 42}\n')
    assert read_prompt_records(f) == [{"prompt": "a red car", "id": 7, "category": "vehicles"}, {"prompt": "42"}]
    assert read_prompts(f) == ["a red car", "42"]


@pytest.mark.parametrize("line", ['{"text": "no prompt field"}', "not json", '["a list"]'])
def test_malformed_jsonl_names_file_and_line(tmp_path, line):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'prompt' field"):
        read_prompts(f)


def test_last_prompts_are_held_out_and_the_bundled_set_resolves():
    prompts = read_prompts(resolve_prompt_file("prompts/tiny.txt"))
    train, heldout = split_prompts(prompts, 8)
    assert len(prompts) == 72 and heldout == prompts[-8:] and train == prompts[:-8]
    assert split_prompts(prompts, 0) == (prompts, [])


def test_binary_or_folder_prompt_file_is_named(tmp_path):
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ValueError, match=r"model.safetensors: not a UTF-8 text file \(byte 0x89 at offset 0\)"):
        read_prompts(binary)
    zeros = tmp_path / "zeros.txt"  # valid UTF-8, but no text
    zeros.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"zeros.txt: not a text file \(it holds NUL bytes\)"):
        read_prompts(zeros)
    with pytest.raises(ValueError, match=f"{tmp_path} is a directory, not a prompt file"):
        read_prompts(tmp_path)
