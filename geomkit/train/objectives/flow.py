"""Textual inversion on FLUX.1 and SD3.x pipeline folders (diffusers): flow matching with CLIP + T5.

As diffusers' FLUX and SD3 DreamBooth/LoRA training scripts (weighting scheme "none": training
timesteps drawn uniformly, sigma of that timestep from the scheduler's table):

    x0 = (VAE latent - shift_factor) * scaling_factor        (cached: `geomkit.train.latents`)
    x_t = (1 - sigma) x0 + sigma noise,   target = noise - x0,   loss = MSE(prediction, target)

- FLUX.1: latents packed into 2x2 patches (`FluxPipeline._pack_latents`) with their image ids,
  text ids all zero, timestep / 1000, the guidance embedding at `--guidance-scale` (default 3.5,
  the scripts' default) when the transformer is guidance-distilled (FLUX.1-dev; schnell has
  none); conditioning = CLIP-L's pooled vector + T5's sequence at the pipeline's default length
  (512), no attention mask, as `FluxPipeline.encode_prompt`.
- SD3.x: conditioning = CLIP-L and CLIP-G (pooled and penultimate sequence) + T5 at 256, as
  `StableDiffusion3Pipeline.encode_prompt`; the prediction is taken as is (no
  `--precondition_outputs` re-weighting).

One learned slot per trained text encoder (`--encoders`, default all), each with its own
m*, init row and prior direction from its own vocabulary; the text paths are
`geomkit.train.text_conditioning.FlowText` (the same code `geomkit.train.conditioning` runs).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F

from geomkit.errors import GeomkitError
from geomkit.hooks import inject
from geomkit.train.data import expand_placeholder
from geomkit.train.objectives.diffusion import (
    flow_matching_batch,
    _frozen,
    ImageLatents,
    _validation_folder,
    half_dtype_for_encoders,
    speed_options,
    split_batch,
)
from geomkit.train.text_conditioning import FlowText, parse_encoders

GUIDANCE_SCALE = 3.5  # diffusers' FLUX training scripts' --guidance_scale default


class FlowObjective(ImageLatents):
    """FLUX.1 (`kind="flux"`) or SD3.x (`kind="sd3"`) pipelines."""

    kind = "diffusion"

    def __init__(self, cfg, inputs: dict, device, folder: Path, kind: str):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

        self.cfg, self.device, self.folder, self.flow = cfg, device, folder, kind
        self.pipeline_class = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
        self.files, self.templates = inputs["files"], inputs["templates"]
        self.sdxl = False
        trained = parse_encoders(getattr(cfg, "encoders", None), kind)
        self.text = FlowText(folder, device, kind, half_dtype_for_encoders(cfg), cfg.progress, trained=trained)
        self.encoders = self.text.encoders
        self.encoder_labels = self.text.trained_labels
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
        if kind == "flux":
            from diffusers import FluxTransformer2DModel as Transformer
        else:
            from diffusers import SD3Transformer2DModel as Transformer
        self.transformer = _frozen(Transformer.from_pretrained(folder, subfolder="transformer"), device, self.weight_dtype)
        self.denoiser, self.denoiser_name = self.transformer, "transformer"
        speed_options(self.transformer, cfg, "transformer")
        self.guidance = (float(getattr(cfg, "guidance_scale", None) or GUIDANCE_SCALE)
                         if kind == "flux" and self.transformer.config.guidance_embeds else None)
        self.vae = _frozen(AutoencoderKL.from_pretrained(folder, subfolder="vae"), device)
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # FLUX packs 2x2 latent patches: the image side is a multiple of twice the VAE's factor
        self.multiple = self.vae_scale * (2 if kind == "flux" else 1)
        if cfg.resolution:
            self.resolution = int(cfg.resolution)
        elif kind == "sd3":
            self.resolution = int(self.transformer.config.sample_size) * self.vae_scale
        else:
            self.resolution = 128 * self.vae_scale  # FluxPipeline.default_sample_size
        if self.resolution % self.multiple:
            raise GeomkitError(f"--resolution {self.resolution}: must be a multiple of {self.multiple} for this pipeline")
        self._prepare_latents("kl")

    # ---- prompts --------------------------------------------------------------------------------
    def setup(self, slots) -> None:
        tok_form = expand_placeholder(self.cfg.placeholder, self.cfg.placeholder, self.cfg.num_vectors)
        self.prompts = [t.format(tok_form) for t in self.templates]
        plain = [t.format(self.cfg.placeholder) for t in self.templates]
        self.template_ids = self.text.token_ids(self.prompts, plain=plain)
        for slot, k in zip(slots, self.text.trained):
            new = set(slot.token_ids)
            lost = [p for p, row in zip(self.prompts, self.template_ids[k].tolist()) if not new & set(row)]
            if lost:
                raise GeomkitError(f"--templates: the placeholder is truncated away in {lost[0]!r} "
                                   f"({self.text.labels[k]}); shorten the template")

    def condition(self, ids: list, vectors, slots):
        """(prompt_embeds, pooled_projections) for per-encoder ids, learned rows injected."""
        return self.text.encode(ids, vectors, slots)

    # ---- the loss -------------------------------------------------------------------------------
    def draw(self, step: int, rank: int = 0, world: int = 1) -> dict:
        """The step's whole batch (a pure function of seed, step and rank)."""
        which, batch = flow_matching_batch(self, step, rank, world)
        batch["which"] = which
        return batch

    def micro_batches(self, step: int, rank: int, world: int, size: int) -> list:
        return split_batch(self.draw(step, rank, world), size)

    def predict(self, part: dict, vectors, slots):
        """The transformer's velocity prediction (unpacked to latent shape) for a drawn (micro-)batch."""
        embeds, pooled = self.condition([ids[part["which"]] for ids in self.template_ids], vectors, slots)
        wd, noisy = self.weight_dtype, part["noisy"]
        if self.flow == "sd3":
            return self.transformer(hidden_states=noisy.to(wd), timestep=part["t"], encoder_hidden_states=embeds.to(wd),
                                    pooled_projections=pooled.to(wd), return_dict=False)[0]
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, wd)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=wd)
        packed = FluxPipeline._pack_latents(noisy.to(wd), b, c, h, w)
        guidance = None if self.guidance is None else torch.full((b,), self.guidance, device=noisy.device)
        pred = self.transformer(hidden_states=packed, timestep=part["t"] / 1000, guidance=guidance,
                                pooled_projections=pooled.to(wd), encoder_hidden_states=embeds.to(wd), txt_ids=txt_ids,
                                img_ids=img_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(pred, h * self.vae_scale, w * self.vae_scale, self.vae_scale)

    def loss(self, vectors, slots, step: int, rank: int = 0, world: int = 1, part=None):
        part = self.draw(step, rank, world) if part is None else part
        return F.mse_loss(self.predict(part, vectors, slots).float(), part["target"].float())

    # ---- validation images ----------------------------------------------------------------------
    def pipeline(self):
        """The diffusers pipeline around the same components (no loading)."""
        if self._pipe is None:
            from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

            sched = FlowMatchEulerDiscreteScheduler.from_pretrained(self.folder, subfolder="scheduler")
            e = self.text.all
            if self.flow == "flux":
                self._pipe = FluxPipeline(scheduler=sched, vae=self.vae, text_encoder=e[0].model, tokenizer=e[0].tokenizer,
                                          text_encoder_2=e[1].model, tokenizer_2=e[1].tokenizer, transformer=self.transformer)
            else:
                self._pipe = StableDiffusion3Pipeline(
                    scheduler=sched, vae=self.vae, text_encoder=e[0].model, tokenizer=e[0].tokenizer,
                    text_encoder_2=e[1].model, tokenizer_2=e[1].tokenizer, text_encoder_3=e[2].model,
                    tokenizer_3=e[2].tokenizer, transformer=self.transformer)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    @torch.no_grad()
    def validate(self, slots, step: int, out_dir) -> list:
        from geomkit.report import atomic_path

        if not self.cfg.validation_prompts:
            return []
        pipe, folder, written = self.pipeline(), _validation_folder(out_dir), []
        with ExitStack() as stack:
            for slot in slots:
                stack.enter_context(inject(slot.enc, slot.vectors().detach(), token_ids=slot.token_ids))
            for k, prompt in enumerate(self.cfg.validation_prompts):
                prompt = expand_placeholder(prompt, self.cfg.placeholder, self.cfg.num_vectors)
                gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed + k)
                images = pipe(prompt, num_inference_steps=self.cfg.validation_inference_steps, generator=gen,
                              height=self.resolution, width=self.resolution, max_sequence_length=self.text.t5_length,
                              num_images_per_prompt=self.cfg.validation_images).images
                for j, im in enumerate(images):
                    path = folder / f"step-{step:06d}-p{k}-{j}.png"
                    with atomic_path(path) as tmp:
                        im.save(tmp, format="PNG")
                    written.append(path)
        return written

    def describe(self) -> dict:
        return {"pipeline": self.pipeline_class, "sdxl": False, "images": len(self.files), "resolution": self.resolution,
                "templates": len(self.templates), "latents_cached": self.latents.cached_rows, "crop": self.cfg.crop,
                "prediction_type": "flow_matching", "encoders": list(self.encoder_labels),
                "t5_max_sequence_length": self.text.t5_length, "guidance_scale": self.guidance,
                "timestep_weighting": "none (uniform)"}
