"""What the denoiser is conditioned on: prompts (with the learned rows injected) -> text embeddings.

One code path for training and for `conditioning()`, the public check that it equals what a
pipeline computes at inference once the token is loaded:

- `ClipText` (SD 1.x/2.x, SDXL): the last hidden state of the one CLIP encoder; for SDXL
  `hidden_states[-2]` of both encoders concatenated, and the pooled (projected) output of encoder 2,
  as `StableDiffusionXLPipeline.encode_prompt`. The pooled vector is taken where the model pools
  with the real ids (`geomkit.hooks.inject` substitutes only at the embedding lookup): with the
  released configs' `eos_token_id: 2` that is the argmax of the ids, i.e. the learned token itself,
  exactly as at inference after `load_textual_inversion`.
- `SanaText` (SANA): the pipeline's own `encode_prompt`, with the complex human instruction it
  uses at inference.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import torch

from geomkit.errors import GeomkitError


def pipeline_kind(folder: Path) -> str:
    """"sana", "sdxl" or "sd" for a diffusers pipeline folder; one line for anything else."""
    index = json.loads((Path(folder) / "model_index.json").read_text())
    cls = index.get("_class_name", "")
    if "Sana" in cls:
        return "sana"
    if "unet" not in index or not (Path(folder) / "unet").is_dir():
        raise GeomkitError(f"--objective diffusion supports Stable Diffusion 1.x/2.x, SDXL and SANA pipelines; "
                           f"{cls or 'this pipeline'} is not supported")
    return "sdxl" if index.get("text_encoder_2") not in (None, [None, None]) else "sd"


def _inject_all(stack: ExitStack, slots, vectors) -> None:
    from geomkit.hooks import inject

    for slot, vec in zip(slots, vectors):
        stack.enter_context(inject(slot.enc, vec, token_ids=slot.token_ids))


class ClipText:
    """The CLIP text encoder(s) of an SD 1.x/2.x or SDXL pipeline, with private tokenizers."""

    def __init__(self, folder: Path, device, dtype=None, progress: bool = False, sdxl: bool = False):
        from geomkit.models import load_encoder
        from geomkit.train.params import private_encoder

        self.sdxl, self.device = sdxl, device
        encs = [load_encoder(str(folder), encoder=k, dtype=dtype, progress=progress) for k in ((1, 2) if sdxl else (1,))]
        for e in encs:
            e.model.to(device)
        self.encoders = [private_encoder(e) for e in encs]

    def token_ids(self, prompts: list) -> list:
        """Each encoder's ids for `prompts`, padded to its length (77), as the pipelines tokenise."""
        out = []
        for enc in self.encoders:
            tok = enc.tokenizer
            out.append(tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                           return_tensors="pt")["input_ids"])
        return out

    def encode(self, ids: list, vectors, slots):
        """(prompt_embeds, pooled_prompt_embeds or None) for per-encoder ids, learned rows injected."""
        with ExitStack() as stack:
            _inject_all(stack, slots, vectors)
            if not self.sdxl:
                return self.encoders[0].model(ids[0].to(self.device))[0], None
            out1 = self.encoders[0].model(ids[0].to(self.device), output_hidden_states=True)
            out2 = self.encoders[1].model(ids[1].to(self.device), output_hidden_states=True)
        return torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1), out2[0]


class SanaText:
    """SANA's Gemma 2 text encoder through the pipeline's own `encode_prompt` (no denoiser loaded)."""

    MAX_SEQUENCE_LENGTH = 300  # the pipeline's default

    def __init__(self, folder: Path, device, dtype=None, progress: bool = False):
        import inspect

        from diffusers import SanaPipeline

        from geomkit.models import load_encoder
        from geomkit.train.params import private_encoder

        self.device = device
        enc = load_encoder(str(folder), encoder=1, dtype=dtype, progress=progress)
        enc.model.to(device)
        self.encoders = [private_encoder(enc)]
        self.chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
        self._pipe = None

    def text_pipeline(self):
        if self._pipe is None:
            from diffusers import SanaPipeline

            enc = self.encoders[0]
            self._pipe = SanaPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, vae=None, transformer=None,
                                      scheduler=None)
        return self._pipe

    def encode(self, prompts: list, vectors, slots, pipe=None):
        """(prompt_embeds, prompt_attention_mask), learned rows injected."""
        with ExitStack() as stack:
            _inject_all(stack, slots, vectors)
            embeds, mask, _, _ = (pipe or self.text_pipeline()).encode_prompt(
                prompts, do_classifier_free_guidance=False, device=self.device,
                max_sequence_length=self.MAX_SEQUENCE_LENGTH, complex_human_instruction=self.chi,
            )
        return embeds, mask


def conditioning(model, prompts, embedding, device: str = "cpu") -> dict:
    """The tensors the trainer feeds the denoiser for `prompts`, with the learned token of
    `embedding` (any file geomkit reads) in place: {"prompt_embeds"} plus, for SDXL,
    {"pooled_prompt_embeds"} and, for SANA, {"prompt_attention_mask"}. Computed by the trainer's
    own code path, so it can be compared with a pipeline's `encode_prompt` after the token is
    loaded there (`load_textual_inversion`; SDXL: one call per encoder)."""
    from geomkit.generation import assign_parts, pipeline_dir, read_token_file
    from geomkit.train.data import expand_placeholder
    from geomkit.train.params import add_placeholder

    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise GeomkitError("conditioning: give at least one prompt")
    folder = pipeline_dir(model)
    kind = pipeline_kind(folder)
    token = read_token_file(embedding)
    dev = torch.device(device)
    text = SanaText(folder, dev) if kind == "sana" else ClipText(folder, dev, sdxl=kind == "sdxl")
    dims = [(k + 1, None, None, e.d_model) for k, e in enumerate(text.encoders)]
    rows = [vec for _idx, vec in assign_parts(token, dims)]
    n = int(rows[0].shape[0])
    slots = [SimpleNamespace(enc=enc, token_ids=add_placeholder(enc, token.name, n)) for enc in text.encoders]
    vectors = [r.to(dev, torch.float32) for r in rows]
    expanded = [expand_placeholder(p, token.name, n) for p in prompts]  # as diffusers' maybe_convert_prompt
    with torch.no_grad():
        if kind == "sana":
            embeds, mask = text.encode(expanded, vectors, slots)
            return {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        embeds, pooled = text.encode(text.token_ids(expanded), vectors, slots)
    out = {"prompt_embeds": embeds}
    if kind == "sdxl":
        out["pooled_prompt_embeds"] = pooled
    return out
