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
    """"sana", "flux", "sd3", "sdxl" or "sd" for a diffusers pipeline folder; one line for anything else."""
    index = json.loads((Path(folder) / "model_index.json").read_text())
    cls = index.get("_class_name", "")
    if "Sana" in cls:
        return "sana"
    if cls.startswith("Flux"):
        return "flux"
    if cls.startswith("StableDiffusion3"):
        return "sd3"
    if "unet" not in index or not (Path(folder) / "unet").is_dir():
        raise GeomkitError(f"--objective diffusion supports Stable Diffusion 1.x/2.x, SDXL, SANA, FLUX.1 and SD3.x pipelines; "
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
    {"pooled_prompt_embeds"}, for SANA, {"prompt_attention_mask"}, for FLUX.1 {"pooled_prompt_embeds",
    "text_ids"} (CLIP-L pooled, T5 at 512 with no mask) and for SD3.x {"pooled_prompt_embeds"} (T5 at 256).
    A FLUX/SD3 file may hold the token for some encoders only (a T5-only FLUX token): the others read
    the placeholder as plain text, as after loading it into those encoders only. Computed by the trainer's
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
    if kind in ("flux", "sd3"):
        return _flow_conditioning(folder, kind, token, prompts, dev)
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


# ---- FLUX.1 and SD3.x: CLIP + T5 -----------------------------------------------------------------
# Each text encoder of a FLUX/SD3 pipeline, in the pipelines' own order (the `--encoder N` numbering)
# and under the key the ecosystem's embedding files use for it.
FLOW_ENCODERS = {"flux": ("clip_l", "t5"), "sd3": ("clip_l", "clip_g", "t5")}
# The pipelines' default `max_sequence_length`: T5's prompt is padded to it. FLUX runs T5 without an
# attention mask, so every position's output depends on the padded length: training uses the length
# inference uses.
FLOW_T5_LENGTH = {"flux": 512, "sd3": 256}


def parse_encoders(spec, kind: str) -> tuple:
    """The indices (0-based, pipeline order) of the encoders `--encoders` names (default: all)."""
    labels = FLOW_ENCODERS[kind]
    if spec in (None, "", "all"):
        return tuple(range(len(labels)))
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    bad = [n for n in names if n not in labels]
    if bad or not names:
        raise GeomkitError(f"--encoders {spec}: this {kind.upper()} pipeline's text encoders are {', '.join(labels)}; "
                           f"name one or more of them (comma list)")
    return tuple(sorted({labels.index(n) for n in names}))


class FlowText:
    """The text encoders of a FLUX.1 (CLIP-L pooled, T5 sequence) or SD3.x (CLIP-L and CLIP-G pooled
    and penultimate sequence, T5 sequence) pipeline, computed as the pipelines' `encode_prompt`:

    - FLUX: `pooled` = CLIP-L's pooler output (ids padded to 77), `prompt_embeds` = T5's last hidden
      state for ids padded to 512, no attention mask;
    - SD3: `prompt_embeds` = [CLIP-L and CLIP-G `hidden_states[-2]` concatenated and zero-padded to T5's
      width ; T5's last hidden state (ids padded to 256)] along the sequence, `pooled` = the two CLIP
      projections concatenated.

    Every encoder keeps a private tokenizer; `trained` (indices, pipeline order) are the ones a
    learned token has rows for (`encoders`); the others see the placeholder as plain text, exactly as
    at inference when the token is loaded into those encoders only."""

    def __init__(self, folder: Path, device, kind: str, dtype=None, progress: bool = False, trained=None):
        from geomkit.models import load_encoder
        from geomkit.train.params import private_encoder

        self.kind, self.device = kind, device
        self.labels = FLOW_ENCODERS[kind]
        self.t5_length = FLOW_T5_LENGTH[kind]
        all_encs = []
        for k, label in enumerate(self.labels):
            # T5 overflows in float16 (as Gemma): under fp16 it stays float32
            dt = None if (label == "t5" and dtype is torch.float16) else dtype
            e = load_encoder(str(folder), encoder=k + 1, dtype=dt, progress=progress)
            want = "t5-encoder" if label == "t5" else "clip-text"
            if e.family.name != want:
                raise GeomkitError(f"pipeline {folder}: text encoder {k + 1} is {e.family.name}, "
                                   f"but a {kind.upper()} pipeline's {label} is {want}")
            e.model.to(device)
            all_encs.append(private_encoder(e))
        self.all = all_encs
        self.trained = tuple(range(len(self.labels))) if trained is None else tuple(trained)
        self.encoders = [self.all[i] for i in self.trained]
        self.trained_labels = [self.labels[i] for i in self.trained]

    def token_ids(self, prompts: list, plain=None) -> list:
        """Every encoder's ids for `prompts` (multi-vector placeholders expanded), padded as the pipeline
        pads them (CLIP 77, T5 its default length). FLUX expands a placeholder per tokenizer
        (`maybe_convert_prompt`), so an encoder without the token sees it unexpanded: `plain`, the
        prompts before expansion, when given. (SD3 has no such step: geomkit's generate expands the
        prompt for every encoder, and so does training.)"""
        out = []
        for k, (label, enc) in enumerate(zip(self.labels, self.all)):
            n = self.t5_length if label == "t5" else enc.tokenizer.model_max_length
            text = plain if (plain is not None and self.kind == "flux" and k not in self.trained) else prompts
            out.append(enc.tokenizer(text, padding="max_length", max_length=n, truncation=True,
                                     return_tensors="pt")["input_ids"])
        return out

    def encode(self, ids: list, vectors, slots):
        """(prompt_embeds, pooled_projections) for per-encoder ids (all encoders), learned rows injected."""
        with ExitStack() as stack:
            _inject_all(stack, slots, vectors)
            outs = {}
            for label, enc, x in zip(self.labels, self.all, ids):
                x = x.to(self.device)
                if label == "t5":
                    outs[label] = enc.model(x)[0]
                elif self.kind == "flux":
                    outs[label] = enc.model(x).pooler_output
                else:
                    outs[label] = enc.model(x, output_hidden_states=True)
        if self.kind == "flux":
            return outs["t5"], outs["clip_l"]
        clip = torch.cat([outs["clip_l"].hidden_states[-2], outs["clip_g"].hidden_states[-2]], dim=-1)
        t5 = outs["t5"]
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip.to(t5.dtype), t5], dim=-2)
        pooled = torch.cat([outs["clip_l"][0], outs["clip_g"][0]], dim=-1)
        return embeds, pooled


def _flow_conditioning(folder, kind: str, token, prompts: list, dev) -> dict:
    from geomkit.generation import assign_parts, pipeline_dims
    from geomkit.train.data import expand_placeholder
    from geomkit.train.params import add_placeholder

    parts = assign_parts(token, pipeline_dims(folder))
    text = FlowText(folder, dev, kind, trained=[idx - 1 for idx, _ in parts])
    n = int(parts[0][1].shape[0])
    slots = [SimpleNamespace(enc=enc, token_ids=add_placeholder(enc, token.name, n)) for enc in text.encoders]
    vectors = [vec.to(dev, torch.float32) for _, vec in parts]
    expanded = [expand_placeholder(p, token.name, n) for p in prompts]
    with torch.no_grad():
        embeds, pooled = text.encode(text.token_ids(expanded, plain=list(prompts)), vectors, slots)
    out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if kind == "flux":
        out["text_ids"] = torch.zeros(embeds.shape[1], 3, device=dev, dtype=embeds.dtype)
    return out
