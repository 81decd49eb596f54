"""Diffusion textual inversion on Stable Diffusion 1.x/2.x, SDXL and SANA pipeline folders (diffusers).

Loss: the noise-prediction MSE (or v-prediction, as the scheduler config says) of the frozen
UNet, conditioned on template prompts holding the placeholder.

- SD 1.x/2.x: the text encoder's last hidden state, as `StableDiffusionPipeline.encode_prompt`.
- SDXL: `hidden_states[-2]` of both encoders concatenated, the pooled (projected) output of
  encoder 2, and time ids (resolution, crop (0, 0), resolution) from the pipeline's own
  `_get_add_time_ids`, as `StableDiffusionXLPipeline.encode_prompt`; each encoder has its own
  placeholder ids, m* and prior direction mu.

- SANA (Gemma 2 text encoder, DiT, DC-AE): flow matching as diffusers' SANA training script
  (x_t = (1 - sigma) x_0 + sigma noise, sigma of a uniformly drawn training timestep, target
  noise - x_0); prompts encoded by the pipeline's own `encode_prompt`, with the complex human
  instruction the pipeline uses at inference (prompts are lower-cased there, so the
  placeholder must be lower case).

VAE latents are computed once: every training image (and its mirror image when --flip-p > 0) is
encoded at the start and the latent distribution's mean and standard deviation are kept; each
step draws `mean + std * N(0, 1)` from the step's generator. That is exactly the distribution
the public scripts sample by running the VAE encoder on every step, without the encoder. (DC-AE
latents are deterministic: cached as they are.)
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F

from geomkit.errors import GeomkitError
from geomkit.hooks import inject
from geomkit.train.data import batch_indices, expand_placeholder, load_image, step_generator

VAE_BATCH = 8


def build(cfg, inputs: dict, device):
    """The objective for the pipeline folder --model names."""
    from geomkit.models import resolve_spec

    folder = resolve_spec(cfg.model, progress=cfg.progress)
    index_file = folder / "model_index.json"
    if index_file.is_file() and "Sana" in json.loads(index_file.read_text()).get("_class_name", ""):
        return SanaObjective(cfg, inputs, device)
    return DiffusionObjective(cfg, inputs, device)


def _frozen(model, device, dtype=None):
    """A frozen, eval-mode copy on `device` (and in `dtype` when given)."""
    if dtype in (None, torch.float32):
        model = model.to(device)
    elif getattr(model, "_keep_in_fp32_modules", None) or getattr(model, "is_quantized", False):
        model = model.to(device, dtype=dtype)  # diffusers' own cast and its warning: there is something to say
    else:
        # diffusers' ModelMixin.to logs "There are modules in UNet2DConditionModel that should be kept in
        # float32: []" on every dtype cast, even with no such module; the plain nn.Module cast is the same cast
        model = torch.nn.Module.to(model, device, dtype=dtype)
    return model.eval().requires_grad_(False)


def split_batch(batch: dict, size: int) -> list:
    """[(micro-batch, weight)]: every entry of a drawn batch cut into chunks of `size` examples
    along the first dimension, weighted by the chunk's share of the batch (per-example losses of
    equal size, so the weighted chunk means sum to the batch mean)."""
    b = len(batch["t"])
    return [({k: v[lo: lo + size] for k, v in batch.items()}, min(size, b - lo) / b) for lo in range(0, b, size)]


def speed_options(model, cfg, what: str):
    """--gradient-checkpointing (diffusers' own, on the frozen UNet / transformer) and --compile
    (torch.compile in place; inductor's caches under geomkit's cache folder)."""
    if cfg.gradient_checkpointing:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise GeomkitError(f"--gradient-checkpointing: this pipeline's {what} does not support it")
        model.enable_gradient_checkpointing()
    if cfg.compile:
        model.compile()
    return model


def half_dtype_for_encoders(cfg, allow_fp16: bool = True):
    """Lean frozen text encoders: under --mixed-precision bf16/fp16 their weights are kept in that
    dtype (the learned rows stay float32 parameters); None (float32) otherwise."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    if half is torch.float16 and not allow_fp16:
        return None
    return half


def lean_vae(obj) -> None:
    """Once latents are cached the VAE encoder is never used again: drop it. Validation decodes
    only; without validation prompts the decoder leaves the accelerator too."""
    obj.vae.encoder = None
    if not obj.cfg.validation_prompts and obj.device.type != "cpu":
        obj.vae.to("cpu")
    if obj.device.type == "cuda":
        torch.cuda.empty_cache()


def _validation_folder(out_dir) -> Path:
    folder = Path(out_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

@torch.no_grad()
def _encode_images(obj) -> list:
    """VAE outputs for every training image (and its mirror when flips are on), encoded once in
    batches; counts the encodes in `obj.vae_encodes` (tests check it stays at one pass)."""
    pix = torch.stack([load_image(f, obj.resolution) for f in obj.files])
    if obj.cfg.flip_p > 0:
        pix = torch.cat([pix, torch.flip(pix, dims=[-1])])
    outs = []
    for s in range(0, pix.shape[0], VAE_BATCH):
        outs.append(obj.vae.encode(pix[s : s + VAE_BATCH].to(obj.device, obj.vae.dtype)))
        obj.vae_encodes += 1
    return outs

class DiffusionObjective:
    kind = "diffusion"

    def __init__(self, cfg, inputs: dict, device):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        from geomkit.models import load_encoder, resolve_spec
        from geomkit.train.params import private_encoder

        self.cfg = cfg
        self.device = device
        folder = resolve_spec(cfg.model, progress=cfg.progress)
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise GeomkitError(f"--objective diffusion needs a diffusers pipeline folder (with model_index.json); {cfg.model} is not one")
        from geomkit.generation import pipeline_dir

        pipeline_dir(str(folder))  # a component folder model_index.json lists but the copy lacks: say so
        index = json.loads(index_file.read_text())
        cls = index.get("_class_name", "")
        if "unet" not in index or not (folder / "unet").is_dir():
            raise GeomkitError(
                f"--objective diffusion supports Stable Diffusion 1.x/2.x, SDXL and SANA pipelines; {cls or 'this pipeline'} "
                "is not supported"
            )
        self.folder = folder
        self.pipeline_class = cls
        self.sdxl = index.get("text_encoder_2") not in (None, [None, None])
        self.files = inputs["files"]
        self.templates = inputs["templates"]

        half = half_dtype_for_encoders(cfg)
        encs = [load_encoder(str(folder), encoder=1, dtype=half, progress=cfg.progress)]
        if self.sdxl:
            encs.append(load_encoder(str(folder), encoder=2, dtype=half, progress=cfg.progress))
        for e in encs:
            e.model.to(device)
        self.encoders = [private_encoder(e) for e in encs]

        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
        # frozen UNet in half precision under mixed precision, as the public scripts; the VAE in float32
        self.unet = _frozen(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), device, self.weight_dtype)
        speed_options(self.unet, cfg, "UNet")
        self.vae = _frozen(AutoencoderKL.from_pretrained(folder, subfolder="vae"), device)
        self.noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = cfg.resolution or int(self.unet.config.sample_size) * self.vae_scale
        if self.resolution % self.vae_scale:
            raise GeomkitError(f"--resolution {self.resolution}: must be a multiple of the VAE's factor {self.vae_scale}")
        self.scaling = float(self.vae.config.scaling_factor)
        self.shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self.vae_encodes = 0
        self._cache_latents()
        lean_vae(self)
        self._pipe = None

    # ---- latents, once ------------------------------------------------------------------------
    @torch.no_grad()
    def _cache_latents(self) -> None:
        dists = [out.latent_dist for out in _encode_images(self)]
        self.lat_mean = torch.cat([d.mean.float() for d in dists])
        self.lat_std = torch.cat([d.std.float() for d in dists])

    # ---- prompts --------------------------------------------------------------------------------
    def setup(self, slots) -> None:
        prompts = [t.format(expand_placeholder(self.cfg.placeholder, self.cfg.placeholder, self.cfg.num_vectors))
                   for t in self.templates]
        self.prompts = prompts
        self.template_ids = []
        for enc in self.encoders:
            tok = enc.tokenizer
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")["input_ids"]
            self.template_ids.append(ids)
        new = set(slots[0].token_ids)
        lost = [p for p, row in zip(prompts, self.template_ids[0].tolist()) if not new & set(row)]
        if lost:
            raise GeomkitError(f"--templates: the placeholder is truncated away in {lost[0]!r}; shorten the template")
        self.time_ids = None
        if self.sdxl:
            r = self.resolution
            self.time_ids = self.pipeline()._get_add_time_ids(
                (r, r), (0, 0), (r, r), dtype=torch.float32,
                text_encoder_projection_dim=int(self.encoders[1].model.config.projection_dim),
            ).to(self.device)

    def pipeline(self):
        """The diffusers pipeline around the same components (no loading): its helpers and sampler."""
        if self._pipe is None:
            from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

            sched = DDIMScheduler.from_pretrained(self.folder, subfolder="scheduler")
            e = self.encoders
            if self.sdxl:
                self._pipe = StableDiffusionXLPipeline(
                    vae=self.vae, text_encoder=e[0].model, text_encoder_2=e[1].model, tokenizer=e[0].tokenizer,
                    tokenizer_2=e[1].tokenizer, unet=self.unet, scheduler=sched,
                )
            else:
                self._pipe = StableDiffusionPipeline(
                    vae=self.vae, text_encoder=e[0].model, tokenizer=e[0].tokenizer, unet=self.unet, scheduler=sched,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                )
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def condition(self, ids: list, vectors, slots):
        """(encoder_hidden_states, added_cond_kwargs) for token ids, learned rows injected."""
        with ExitStack() as stack:
            for slot, vec in zip(slots, vectors):
                stack.enter_context(inject(slot.enc, vec, token_ids=slot.token_ids))
            if not self.sdxl:
                return self.encoders[0].model(ids[0].to(self.device))[0], None
            out1 = self.encoders[0].model(ids[0].to(self.device), output_hidden_states=True)
            out2 = self.encoders[1].model(ids[1].to(self.device), output_hidden_states=True)
        cond = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        pooled = out2[0]
        added = {"text_embeds": pooled, "time_ids": self.time_ids.expand(ids[0].shape[0], -1)}
        return cond, added

    # ---- the loss -------------------------------------------------------------------------------
    def draw(self, step: int, rank: int = 0, world: int = 1) -> dict:
        """The step's whole batch: examples, flips, templates, latents, noise, timesteps (a pure
        function of seed, step and rank), as noisy latents, timesteps, targets and template rows."""
        cfg = self.cfg
        n_img = len(self.files)
        b = cfg.batch_size
        gen = step_generator(cfg.seed, step, rank)
        idx = torch.tensor(batch_indices(n_img, b, step, cfg.seed, rank, world))
        flips = (torch.rand(b, generator=gen) < cfg.flip_p).long() if cfg.flip_p > 0 else torch.zeros(b, dtype=torch.long)
        which = torch.randint(0, len(self.templates), (b,), generator=gen)
        rows = (idx + flips * n_img).to(self.lat_mean.device)
        mean, std = self.lat_mean[rows], self.lat_std[rows]
        sample = mean + std * torch.randn(mean.shape, generator=gen).to(mean.device)
        latents = (sample - self.shift) * self.scaling
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=gen).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise GeomkitError(f"scheduler prediction_type {kind!r} is not supported (epsilon, v_prediction)")
        return {"noisy": noisy, "t": t, "target": target, "which": which}

    def micro_batches(self, step: int, rank: int, world: int, size: int) -> list:
        return split_batch(self.draw(step, rank, world), size)

    def loss(self, vectors, slots, step: int, rank: int = 0, world: int = 1, part=None):
        """The batch's MSE (or, given `part`, that micro-batch's mean), the learned rows injected."""
        part = self.draw(step, rank, world) if part is None else part
        cond, added = self.condition([ids[part["which"]] for ids in self.template_ids], vectors, slots)
        kwargs = {}
        if added is not None:
            kwargs["added_cond_kwargs"] = {k: v.to(self.weight_dtype) for k, v in added.items()}
        pred = self.unet(part["noisy"].to(self.weight_dtype), part["t"], cond.to(self.weight_dtype), **kwargs).sample
        return F.mse_loss(pred.float(), part["target"].float())

    # ---- validation images ----------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, slots, step: int, out_dir) -> list:
        from geomkit.report import atomic_path

        if not self.cfg.validation_prompts:
            return []
        pipe, folder, written = self.pipeline(), _validation_folder(out_dir), []
        vectors = [s.vectors().detach() for s in slots]
        with ExitStack() as stack:
            for slot, vec in zip(slots, vectors):
                stack.enter_context(inject(slot.enc, vec, token_ids=slot.token_ids))
            for k, prompt in enumerate(self.cfg.validation_prompts):
                gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed + k)
                images = pipe(
                    prompt, num_inference_steps=self.cfg.validation_inference_steps, generator=gen,
                    height=self.resolution, width=self.resolution, num_images_per_prompt=self.cfg.validation_images,
                ).images
                for j, im in enumerate(images):
                    path = folder / f"step-{step:06d}-p{k}-{j}.png"
                    with atomic_path(path) as tmp:
                        im.save(tmp, format="PNG")
                    written.append(path)
        return written

    def describe(self) -> dict:
        return {
            "pipeline": self.pipeline_class, "sdxl": self.sdxl, "images": len(self.files), "resolution": self.resolution,
            "templates": len(self.templates), "latents_cached": int(self.lat_mean.shape[0]),
            "prediction_type": self.noise_scheduler.config.prediction_type,
        }


class SanaObjective:
    """SANA pipelines: flow matching on the DiT, the Gemma 2 text encoder's learned rows injected."""

    kind = "diffusion"
    MAX_SEQUENCE_LENGTH = 300  # the pipeline's default

    def __init__(self, cfg, inputs: dict, device):
        import inspect

        from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

        from geomkit.models import load_encoder, resolve_spec
        from geomkit.train.params import private_encoder

        self.cfg, self.device = cfg, device
        self.folder = folder = resolve_spec(cfg.model, progress=cfg.progress)
        self.pipeline_class = json.loads((folder / "model_index.json").read_text()).get("_class_name", "SanaPipeline")
        if cfg.placeholder != cfg.placeholder.lower():
            raise GeomkitError(f"--placeholder {cfg.placeholder}: SANA pipelines lower-case every prompt; use a lower-case placeholder")
        self.files, self.templates = inputs["files"], inputs["templates"]
        self.sdxl = False
        # Gemma 2 overflows in float16: under fp16 the SANA text encoder stays float32
        enc = load_encoder(str(folder), encoder=1, dtype=half_dtype_for_encoders(cfg, allow_fp16=False), progress=cfg.progress)
        enc.model.to(device)
        self.encoders = [private_encoder(enc)]
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
        self.transformer = _frozen(SanaTransformer2DModel.from_pretrained(folder, subfolder="transformer"), device, self.weight_dtype)
        speed_options(self.transformer, cfg, "transformer")
        self.vae = _frozen(AutoencoderDC.from_pretrained(folder, subfolder="vae"), device)
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        self.vae_scale = 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)
        self.resolution = cfg.resolution or int(self.transformer.config.sample_size) * self.vae_scale
        if self.resolution % self.vae_scale:
            raise GeomkitError(f"--resolution {self.resolution}: must be a multiple of the VAE's factor {self.vae_scale}")
        self.chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
        self.vae_encodes = 0
        self._cache_latents()
        lean_vae(self)
        self._pipe = None

    @torch.no_grad()
    def _cache_latents(self) -> None:
        lat = torch.cat([out.latent.float() for out in _encode_images(self)])
        self.latents = lat * float(self.vae.config.scaling_factor)

    def pipeline(self):
        if self._pipe is None:
            from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

            sched = FlowMatchEulerDiscreteScheduler.from_pretrained(self.folder, subfolder="scheduler")
            enc = self.encoders[0]
            self._pipe = SanaPipeline(tokenizer=enc.tokenizer, text_encoder=enc.model, vae=self.vae,
                                      transformer=self.transformer, scheduler=sched)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def setup(self, slots) -> None:
        tok_form = expand_placeholder(self.cfg.placeholder, self.cfg.placeholder, self.cfg.num_vectors)
        self.prompts = [t.format(tok_form) for t in self.templates]
        new = set(slots[0].token_ids)
        ids = self.encoders[0].tokenizer([p.lower() for p in self.prompts], truncation=True,
                                         max_length=self.MAX_SEQUENCE_LENGTH)["input_ids"]
        lost = [p for p, row in zip(self.prompts, ids) if not new & set(row)]
        if lost:
            raise GeomkitError(f"--templates: the placeholder is lost in {lost[0]!r}")

    def condition(self, prompts: list, vectors, slots):
        """(prompt_embeds, attention_mask) from the pipeline's own encode_prompt, rows injected."""
        slot = slots[0]
        with inject(slot.enc, vectors[0], token_ids=slot.token_ids):
            embeds, mask, _, _ = self.pipeline().encode_prompt(
                prompts, do_classifier_free_guidance=False, device=self.device,
                max_sequence_length=self.MAX_SEQUENCE_LENGTH, complex_human_instruction=self.chi,
            )
        return embeds, mask

    def draw(self, step: int, rank: int = 0, world: int = 1) -> dict:
        """The step's whole batch (a pure function of seed, step and rank)."""
        cfg = self.cfg
        n_img, b = len(self.files), cfg.batch_size
        gen = step_generator(cfg.seed, step, rank)
        idx = torch.tensor(batch_indices(n_img, b, step, cfg.seed, rank, world))
        flips = (torch.rand(b, generator=gen) < cfg.flip_p).long() if cfg.flip_p > 0 else torch.zeros(b, dtype=torch.long)
        which = torch.randint(0, len(self.templates), (b,), generator=gen)
        x0 = self.latents[(idx + flips * n_img).to(self.latents.device)]
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        # uniform timestep density ("none" weighting of diffusers' SANA script), sigma of that timestep
        indices = (torch.rand(b, generator=gen) * self.noise_scheduler.config.num_train_timesteps).long()
        timesteps = self.noise_scheduler.timesteps[indices].to(x0.device)
        sigmas = self.noise_scheduler.sigmas[indices].to(x0.device, torch.float32).view(b, 1, 1, 1)
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        return {"noisy": noisy, "t": timesteps, "target": noise - x0, "prompts": [self.prompts[i] for i in which.tolist()]}

    def micro_batches(self, step: int, rank: int, world: int, size: int) -> list:
        return split_batch(self.draw(step, rank, world), size)

    def loss(self, vectors, slots, step: int, rank: int = 0, world: int = 1, part=None):
        part = self.draw(step, rank, world) if part is None else part
        embeds, mask = self.condition(part["prompts"], vectors, slots)
        pred = self.transformer(hidden_states=part["noisy"].to(self.weight_dtype), encoder_hidden_states=embeds.to(self.weight_dtype),
                                encoder_attention_mask=mask, timestep=part["t"], return_dict=False)[0]
        return F.mse_loss(pred.float(), part["target"].float())

    @torch.no_grad()
    def validate(self, slots, step: int, out_dir) -> list:
        from geomkit.report import atomic_path

        if not self.cfg.validation_prompts:
            return []
        pipe, folder, written = self.pipeline(), _validation_folder(out_dir), []
        slot = slots[0]
        with inject(slot.enc, slot.vectors().detach(), token_ids=slot.token_ids):
            for k, prompt in enumerate(self.cfg.validation_prompts):
                prompt = expand_placeholder(prompt, self.cfg.placeholder, self.cfg.num_vectors)  # SANA does not
                gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed + k)
                images = pipe(prompt, num_inference_steps=self.cfg.validation_inference_steps, generator=gen,
                              height=self.resolution, width=self.resolution,
                              num_images_per_prompt=self.cfg.validation_images).images
                for j, im in enumerate(images):
                    path = folder / f"step-{step:06d}-p{k}-{j}.png"
                    with atomic_path(path) as tmp:
                        im.save(tmp, format="PNG")
                    written.append(path)
        return written

    def describe(self) -> dict:
        return {"pipeline": self.pipeline_class, "sdxl": False, "images": len(self.files), "resolution": self.resolution,
                "templates": len(self.templates), "latents_cached": int(self.latents.shape[0]),
                "prediction_type": "flow_matching", "complex_human_instruction": bool(self.chi)}
