"""Byte-level tokenizers built offline for the tiny pipelines (CLIP, Qwen, T5): every character is a token, enough to
make prompts differ. Nothing here downloads anything, builds a model or knows a family."""

from __future__ import annotations

import json
import string
from pathlib import Path

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tokenizer_files(folder: Path, kind: str) -> tuple[Path, Path]:
    """A byte-level BPE vocabulary with no merges (``kind``: clip or qwen): every character is a token."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_vocab()
    if kind == "clip":
        vocab = {c: i for i, c in enumerate(chars)}
        vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
        vocab["<|startoftext|>"] = len(vocab)
        vocab["<|endoftext|>"] = len(vocab)
    else:
        vocab = {c: i for i, c in enumerate(chars)}
        for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
            vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab, merges = write_tokenizer_files(folder, "clip")
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def qwen_tokenizer(folder: Path):
    from transformers import Qwen2Tokenizer

    vocab, merges = write_tokenizer_files(folder, "qwen")
    tok = Qwen2Tokenizer(str(vocab), str(merges), pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def t5_tokenizer():
    """A T5 (Unigram) tokenizer over the printable ASCII characters, with T5's own specials; it saves and loads
    back the same (transformers builds its Unigram from this vocabulary)."""
    from transformers import T5TokenizerFast

    pieces = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in pieces]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
