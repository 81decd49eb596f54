"""Semantic drift (Fig. 1b): how close a vector's direction stays to words it should mean.

`semantic_drift(enc, vector, words)` gives the cosine of `vector` (raw embedding-table space, e.g.
a learned token) to each related word's embedding row. Cosine ignores scale, so Gemma's sqrt(d)
factor does not matter. A word that is several tokens is represented by the mean of its pieces'
rows (`pieces="mean"`, flagged in the result) or refused (`pieces="error"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from geomkit.errors import GeomkitError
from geomkit.geometry import drift


@dataclass
class WordVector:
    word: str
    ids: list
    vector: torch.Tensor  # (d,) float32
    single_token: bool


def word_vectors(enc, words: Sequence[str], pieces: str = "mean") -> list[WordVector]:
    table = enc.embedding_table()
    out = []
    for w in words:
        try:
            ids = [enc.token_id(w)]
        except GeomkitError:
            if pieces != "mean":
                raise
            ids = enc.pieces(" " + w) or enc.pieces(w)
        if not ids:
            raise GeomkitError(f"{w!r} has no tokens in {enc.name}")
        out.append(WordVector(w, ids, table[ids].to(torch.float32).mean(0), len(ids) == 1))
    return out


def semantic_drift(enc, vector: torch.Tensor, words: Sequence[str], pieces: str = "mean") -> list[dict]:
    """[{"word", "cosine", "single_token", "ids"}] for `vector` (d,) against each word."""
    vector = torch.as_tensor(vector)
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1 or vector.shape[0] != enc.d_model:
        raise GeomkitError(f"vector of shape {tuple(vector.shape)}; this model needs ({enc.d_model},)")
    wv = word_vectors(enc, words, pieces)
    cos = drift(vector.to(torch.float32), torch.stack([w.vector for w in wv]))
    return [{"word": w.word, "cosine": float(c), "single_token": w.single_token, "ids": w.ids} for w, c in zip(wv, cos)]


def mean_drift(enc, vector: torch.Tensor, words: Sequence[str]) -> float:
    """Mean cosine to the related words: the number a trainer can log per step."""
    rows = semantic_drift(enc, vector, words)
    return sum(r["cosine"] for r in rows) / len(rows)
