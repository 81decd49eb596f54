"""THE hooking layer: the only module in geomkit that registers hooks.

Two context managers, in the spirit of baukit's `TraceDict`:

- `capture(enc, sites)` records named sites (see `geomkit.families`) during forwards run inside it;
- `inject(enc, vectors, token_ids=... | mask=...)` makes chosen embedding rows come from `vectors`
  (learned tokens for the trainer, scaled tokens for the probes), with gradients reaching `vectors`
  and nothing upstream.

Both remove every hook they registered on exit, exceptions included.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Optional, Sequence

from geomkit.errors import GeomkitError

_BLOCK_SITE = re.compile(r"^blocks\.(\d+)\.(resid_pre|ln1|resid_post)$")


class _StopForward(Exception):
    """Raised by a capture hook (``stop=True``) once every requested site is recorded, so a
    forward ends early; `run_with_cache` catches it."""


def _first_tensor(x):
    """Block outputs are tuples in some transformers versions and tensors in others."""
    if isinstance(x, (tuple, list)):
        return x[0]
    return x


def resolve_site(enc, site: str):
    """(module, kind) for a site name; kind is "pre" (module input) or "out" (module output)."""
    m = _BLOCK_SITE.match(site)
    if m:
        i, what = int(m.group(1)), m.group(2)
        if i >= enc.n_blocks:
            raise GeomkitError(f"site {site!r}: the model has {enc.n_blocks} blocks (0..{enc.n_blocks - 1})")
        block = enc.blocks[i]
        if what == "resid_pre":
            return block, "pre"
        if what == "resid_post":
            return block, "out"
        from geomkit.families import find_module

        mod = find_module(block, [enc.family.ln1])
        if mod is None:
            raise GeomkitError(f"site {site!r} not found in this {enc.family.name} model")
        return mod, "out"
    mod = enc.site_module(site)
    if mod is None:
        raise GeomkitError(
            f"site {site!r} does not exist in this {enc.family.name} model; available: {', '.join(enc.sites()[:8])}, ..."
        )
    return mod, "out"


def _hidden_from_call(args, kwargs):
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if hasattr(v, "shape"))


@contextmanager
def capture(enc, sites: Iterable[str], *, detach: bool = True, dtype=None, stop: bool = False):
    """Record `sites` during forwards run inside the block; yields {site: tensor}.

    A site hit several times (several forwards) keeps the last value. `detach=False` keeps the
    graph (for gradients through captured activations). `dtype` casts on capture (e.g. float64).
    `stop=True` ends the forward (by raising an internal exception that `run_with_cache`
    catches) as soon as every site is recorded: probes of early sites skip the later blocks.
    """
    cache: dict = {}
    handles = []
    wanted = list(dict.fromkeys(sites))

    def keep(site, value):
        value = _first_tensor(value)
        if detach:
            value = value.detach()
        if dtype is not None:
            value = value.to(dtype)
        cache[site] = value
        if stop and len(cache) == len(wanted):
            raise _StopForward

    try:
        for site in wanted:
            module, kind = resolve_site(enc, site)
            if kind == "pre":
                handles.append(
                    module.register_forward_pre_hook(
                        lambda mod, args, kwargs, s=site: keep(s, _hidden_from_call(args, kwargs)),
                        with_kwargs=True,
                    )
                )
            else:
                handles.append(module.register_forward_hook(lambda mod, args, out, s=site: keep(s, out)))
        yield cache
    finally:
        for h in handles:
            h.remove()


@contextmanager
def inject(enc, vectors, *, token_ids: Optional[Sequence[int]] = None, mask=None):
    """Replace embedding rows inside the block.

    `vectors` live in the raw embedding-table space (before Gemma's sqrt(d) factor, which is
    applied here as the model would). Either
    - `token_ids` (n ids) with `vectors` (n, d): every occurrence of id k takes `vectors[k]`. Ids
      may lie beyond the table (new placeholder tokens): only the embedding lookup sees a
      stand-in id; the rest of the model sees the real ids, so CLIP pools where it pools at
      inference once the token is added (argmax of the ids under `eos_token_id: 2`, which is the
      new token; the first EOS otherwise); or
    - `mask` (batch, seq) bool with `vectors` (n_true, d) in row-major order, or (d,) for all.
    The original embedding output is detached, so gradients reach `vectors` only.
    """
    import torch

    if (token_ids is None) == (mask is None):
        raise ValueError("inject needs exactly one of token_ids= or mask=")
    state = {"mask": mask, "index": None}
    handles = []
    ids_t = None
    if token_ids is not None:
        ids_t = torch.as_tensor(list(token_ids), dtype=torch.long)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids_t):
            raise ValueError(f"inject: {len(ids_t)} token ids need vectors of shape ({len(ids_t)}, d), got {tuple(vectors.shape)}")
    if vectors.shape[-1] != enc.d_model:
        raise GeomkitError(f"embedding has dimension {vectors.shape[-1]}, but this model's embeddings have {enc.d_model}")

    def embed_pre(mod, args, kwargs):
        # At the lookup itself, not at the model's entry: everything else in the forward (CLIP's
        # pooling above all) must see the ids inference will see.
        input_ids = args[0] if args else kwargs.get("input", kwargs.get("input_ids"))
        match = input_ids[..., None] == ids_t.to(input_ids.device)
        hit, which = match.any(-1), match.long().argmax(-1)
        state["mask"], state["index"] = hit, which
        clean = torch.where(hit, torch.full_like(input_ids, enc.stand_in_id), input_ids)
        if args:
            return (clean, *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["input" if "input" in kwargs else "input_ids"] = clean
        return args, kwargs

    def embed_out(mod, args, out):
        hit = state["mask"]
        if hit is None:
            return out
        # no `hit.any()` shortcut: on a GPU it would wait for the device on every forward, and
        # torch.where gives the same values (the embedding output, detached) where nothing is hit
        if tuple(hit.shape) != tuple(out.shape[:-1]):
            raise ValueError(f"inject: mask of shape {tuple(hit.shape)} does not match this forward's {tuple(out.shape[:-1])}")
        # the scale in the model's own dtype, as the model applies it (bf16 rounds sqrt(d))
        scale = torch.as_tensor(enc.embed_scale, dtype=out.dtype, device=out.device)
        vec = vectors.to(dtype=out.dtype, device=out.device) * scale
        if state["index"] is not None:
            rows = vec[state["index"]]  # (batch, seq, d)
        elif vec.ndim == 1:
            rows = vec.expand_as(out)
        else:
            sel = hit[..., None].to(out.device).expand_as(out)
            rows = out.new_zeros(out.shape).masked_scatter(sel, vec)
        return torch.where(hit[..., None].to(out.device), rows, out.detach())

    try:
        if ids_t is not None:
            handles.append(enc.embedding_module().register_forward_pre_hook(embed_pre, with_kwargs=True))
        handles.append(enc.embedding_module().register_forward_hook(embed_out))
        yield
    finally:
        for h in handles:
            h.remove()


def run_with_cache(enc, input_ids, attention_mask=None, sites: Iterable[str] = (), **kwargs):
    """One forward of the encoder with `sites` captured: (model output, {site: tensor}).

    With `stop=True` the forward ends once the sites are recorded and the output is None."""
    with capture(enc, sites, **kwargs) as cache:
        try:
            out = enc.forward(input_ids, attention_mask)
        except _StopForward:
            out = None
    return out, cache
