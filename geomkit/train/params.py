"""The learned rows of one text encoder, and how they are parametrised.

- DTI (`dti`, `dti-adamw`): the parameter is a unit direction v (n_vectors, d) and the scale m*
  is fixed, e = m* v (paper eq. 1). m* comes from that encoder's own vocabulary (all-zero rows
  excluded), so SDXL's CLIP-L and bigG each get their own.
- TI (`ti`, `ti-rescaled`, `crossinit`): the parameter is e itself.

The new rows are parameters of their own, injected through `geomkit.hooks.inject`; the
original embedding table stays frozen and is never resized, so there is no optimiser state for
its rows and nothing to restore after a step. Each slot keeps a private copy of the tokenizer
(the placeholder is added there), so the process-wide encoder cache is never modified.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from geomkit.errors import GeomkitError
from geomkit.train.data import token_strings


@dataclass
class Slot:
    enc: Any  # geomkit.models.Encoder with a private tokenizer that knows the placeholder
    token_ids: list
    m_star: float
    init: torch.Tensor  # (n, d) float32: the starting embedding rows e_0
    init_word: torch.Tensor  # (d,) float32: the init word's raw table row
    mu: torch.Tensor  # (d,) float32, unit: the vMF prior's mean direction
    param: torch.nn.Parameter  # v (directional) or e (free)
    directional: bool

    def vectors(self) -> torch.Tensor:
        """The embedding rows e (n, d), in the graph: m* v for DTI, the parameter itself for TI."""
        return self.m_star * self.param if self.directional else self.param

    def embedding(self) -> torch.Tensor:
        return self.vectors().detach().to(torch.float32).cpu()


def private_encoder(enc):
    """The same (frozen, shared) model with its own tokenizer copy, free to gain tokens."""
    tok = copy.deepcopy(enc.tokenizer)
    tok.padding_side = "right"
    return dataclasses.replace(enc, tokenizer=tok, _context={})


def add_placeholder(enc, placeholder: str, n_vectors: int) -> list[int]:
    """Add `placeholder` (and `placeholder_1..`) to the encoder's private tokenizer; their ids.

    CLIP and T5 tokenizers get plain added tokens, exactly as diffusers' `load_textual_inversion` adds
    them at inference. SentencePiece-style tokenizers (Gemma) get `lstrip=True`, so the space
    before the placeholder belongs to it, as the space before a word belongs to that word's
    token (`"The <tok> is"` -> `The`, `<tok>`, `▁is`, like `The`, `▁fox`, `▁is`).
    """
    from transformers import AddedToken

    tok = enc.tokenizer
    names = token_strings(placeholder, n_vectors)
    vocab = tok.get_vocab()
    for name in names:
        if name in vocab:
            raise GeomkitError(
                f"--placeholder {placeholder}: {name!r} is already in the vocabulary of {enc.name} (id {vocab[name]}); "
                "choose a new string, e.g. <my-concept>"
            )
    pieces = tok(placeholder, add_special_tokens=False)["input_ids"]
    if len(pieces) == 1:
        raise GeomkitError(
            f"--placeholder {placeholder}: already a token of {enc.name} ({enc.token_str(pieces[0])!r}, id {pieces[0]}), "
            "so it already means something to the model; choose a new string, e.g. <my-concept>"
        )
    if enc.family.name in ("clip-text", "t5-encoder", "umt5-encoder"):
        tok.add_tokens(names)  # as load_textual_inversion adds them (T5: FLUX's own TI loading)
    else:
        tok.add_tokens([AddedToken(n, lstrip=True, rstrip=False, normalized=False) for n in names])
    ids = tok.convert_tokens_to_ids(names)
    check = tok(" ".join(names), add_special_tokens=False)["input_ids"]
    if list(check) != list(ids):
        raise GeomkitError(f"--placeholder {placeholder}: the tokenizer of {enc.name} does not keep it as one token")
    return list(ids)


def word_id(enc, word: str, flag: str) -> int:
    try:
        return enc.token_id(word)
    except GeomkitError as exc:
        raise GeomkitError(f"{flag} {word}: {exc}") from None


def table_row(enc, token_id: int, flag: str, word: str) -> torch.Tensor:
    row = enc.embedding_table()[token_id].detach().to(torch.float32).cpu().clone()
    if not torch.isfinite(row).all() or float(row.norm()) == 0.0:
        raise GeomkitError(f"{flag} {word}: its embedding row is zero or not finite; choose another word")
    return row


def magnitude_for(enc, spec: str) -> float:
    from geomkit.geometry import magnitude

    m = float(magnitude(enc.embedding_table(), spec))
    if not m > 0 or m == float("inf"):
        raise GeomkitError(f"--magnitude {spec}: m* = {m} for {enc.name}; it must be positive and finite")
    return m


@torch.no_grad()
def encoder_output(enc, word: str, token_id: int) -> torch.Tensor:
    """CrossInit's starting point: the text encoder's output (its final normalisation, or the
    last block's output for post-norm models) at the word's position in a prompt holding only
    that word with the tokenizer's special tokens, mapped back to raw table space (/ Gemma's
    sqrt(d) scale)."""
    from geomkit.hooks import capture

    for form in (" " + word, word):
        ids = list(enc.tokenizer(form)["input_ids"])  # with the tokenizer's special tokens
        if token_id in ids:
            break
    else:
        raise GeomkitError(f"--init-word {word}: not found as one token when encoded alone")
    pos = ids.index(token_id)
    site = "final_norm" if enc.site_module("final_norm") is not None else f"blocks.{enc.n_blocks - 1}.resid_post"
    input_ids = torch.tensor([ids], device=enc.device)
    with capture(enc, [site], dtype=torch.float32) as cache:
        enc.forward(input_ids, torch.ones_like(input_ids))
    return (cache[site][0, pos] / enc.embed_scale).cpu()


def build_slot(enc, cfg, token_ids: list) -> Slot:
    """Starting point, prior and parameter of one encoder's learned rows."""
    init_id = word_id(enc, cfg.init_word, "--init-word")
    prior_id = init_id if cfg.prior_word in (None, "", cfg.init_word) else word_id(enc, cfg.prior_word, "--prior-word")
    init_row = table_row(enc, init_id, "--init-word", cfg.init_word)
    prior_row = init_row if prior_id == init_id else table_row(enc, prior_id, "--prior-word", cfg.prior)
    m_star = magnitude_for(enc, cfg.magnitude)
    n = cfg.num_vectors
    start = init_row
    if cfg.method == "crossinit":
        start = encoder_output(enc, cfg.init_word, init_id)
        if not torch.isfinite(start).all() or float(start.norm()) == 0.0:
            raise GeomkitError(f"--init-word {cfg.init_word}: the encoder's output for it is zero or not finite")
    init = start[None].repeat(n, 1).contiguous()
    mu = prior_row / prior_row.norm()
    directional = cfg.method in ("dti", "dti-adamw")
    value = init / init.norm(dim=-1, keepdim=True) if directional else init.clone()
    param = torch.nn.Parameter(value.to(enc.device))
    return Slot(enc=enc, token_ids=list(token_ids), m_star=m_star, init=init, init_word=init_row,
                mu=mu.to(enc.device), param=param, directional=directional)
