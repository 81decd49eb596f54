"""Prompt files and token batches shared by the probes.

Sequences are padded on the RIGHT by geomkit itself (never by the tokenizer, whose padding side
differs between models), so a token's index in its row is its absolute position for every
family: learned position tables (BERT, CLIP, Whisper) and RoPE (Gemma) alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

from geomkit.errors import GeomkitError
from geomkit.probes._args import subsample  # noqa: F401  public here: subsample(items, n, seed) -> a seeded subset in order

POSITION_PROMPTS = "position_prompts.txt"
EVAL_PROMPTS = "eval_prompts.txt"


def packaged(name: str) -> Path:
    return Path(str(resources.files("geomkit") / "data" / name))


def read_prompt_lines(path=None, default: str = POSITION_PROMPTS) -> tuple[Path, list[str]]:
    """(file, its lines) for a user's prompt file, or the packaged `default` when `path` is None."""
    p = Path(path).expanduser() if path else packaged(default)
    if not p.is_file():
        raise GeomkitError(f"prompt file {path} not found")
    try:
        return p, p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GeomkitError(f"prompt file {path}: cannot be read as UTF-8 text ({exc})") from None


def read_prompts(path=None, *, default: str = POSITION_PROMPTS, placeholder: bool = False) -> list[str]:
    """Non-blank, non-`#` lines of a prompt file (the packaged set when `path` is None).
    With `placeholder=True` only lines holding exactly one `{}` are kept (templates)."""
    p, lines = read_prompt_lines(path, default)
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if placeholder:
        prompts = [t for t in prompts if t.count("{}") == 1]
    if not prompts:
        what = "template lines with one '{}' placeholder" if placeholder else "prompt lines (blank and '#' lines are skipped)"
        raise GeomkitError(f"prompt file {p}: no usable prompts; it needs {what}")
    return prompts


def split_prompts(prompts: Sequence[str], held_out: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded, reproducible split into (train, held-out); both are non-empty."""
    if not 0 < held_out < 1:
        raise GeomkitError(f"--held-out {held_out}: must lie strictly between 0 and 1")
    if len(prompts) < 2:
        raise GeomkitError(f"{len(prompts)} prompt(s): a train / held-out split needs at least 2")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_test = min(len(prompts) - 1, max(1, round(held_out * len(prompts))))
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return [prompts[i] for i in train], [prompts[i] for i in test]


@dataclass
class Tokenized:
    ids: list  # list[list[int]], with the model's special tokens
    special: list  # list[list[bool]], True where a special token (BOS/CLS/EOS/SEP...) stands


def tokenize(enc, prompts: Sequence[str], max_length: Optional[int] = None) -> Tokenized:
    """Each prompt on its own (no padding), with special tokens, truncated to the model's length."""
    limit = max_length or enc.max_length
    ids, special = [], []
    for text in prompts:
        out = enc.tokenizer(text, truncation=True, max_length=limit, return_special_tokens_mask=True)
        ids.append(list(out["input_ids"]))
        special.append([bool(s) for s in out["special_tokens_mask"]])
    return Tokenized(ids, special)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) as long tensors, padded on the right."""
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_id(enc) -> int:
    tok = enc.tokenizer
    for value in (tok.pad_token_id, tok.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def find_token(ids: Sequence[int], special: Sequence[bool], token_id: int) -> Optional[int]:
    """Index of the first non-special occurrence of `token_id`, or None."""
    for i, (t, s) in enumerate(zip(ids, special)):
        if t == token_id and not s:
            return i
    return None
