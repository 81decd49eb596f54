"""Diffusion textual inversion on Stable Diffusion 1.x/2.x, SDXL and SANA pipeline folders (diffusers).

Loss: the noise-prediction MSE (or v-prediction, as the scheduler config says) of the frozen
UNet, conditioned on template prompts holding the placeholder.

- Text conditioning: `geomkit.train.text_conditioning` (one code path with the public
  `geomkit.train.conditioning`): SD 1.x/2.x the last hidden state; SDXL `hidden_states[-2]` of
  both encoders and the pooled output of encoder 2, pooled where inference pools; each encoder
  has its own placeholder ids, m* and prior direction mu.
- SDXL micro-conditioning per example, as diffusers' SDXL training scripts: time ids =
  (original height, original width, crop top, crop left, resolution, resolution) of the image
  and crop each example was taken from.
- SANA (Gemma 2 text encoder, DiT, DC-AE): flow matching as diffusers' SANA training script
  (x_t = (1 - sigma) x_0 + sigma noise, sigma of a uniformly drawn training timestep, target
  noise - x_0); prompts encoded by the pipeline's own `encode_prompt`, with the complex human
  instruction the pipeline uses at inference (prompts are lower-cased there, so the
  placeholder must be lower case).

Latents and crops: `geomkit.train.latents` (encoded once under --crop center; per step under
--crop random).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F

from geomkit.errors import GeomkitError
from geomkit.hooks import inject
from geomkit.train.data import batch_indices, expand_placeholder, step_generator
from geomkit.train.latents import TrainingLatents
from geomkit.train.text_conditioning import ClipText, SanaText, pipeline_kind


def build(cfg, inputs: dict, device):
    """The objective for the pipeline folder --model names."""
    from geomkit.generation import pipeline_dir
    from geomkit.models import resolve_spec

    folder = resolve_spec(cfg.model, progress=cfg.progress)
    if not (folder / "model_index.json").is_file():
        raise GeomkitError(f"--objective diffusion needs a diffusers pipeline folder (with model_index.json); {cfg.model} is not one")
    pipeline_dir(str(folder))  # a component folder model_index.json lists but the copy lacks: say so
    kind = pipeline_kind(folder)
    if getattr(cfg, "encoders", None) and kind not in ("flux", "sd3"):
        raise GeomkitError(f"--encoders {cfg.encoders}: only FLUX.1 and SD3.x pipelines train a subset of their text "
                           f"encoders; this is a {kind.upper()} pipeline")
    if kind == "sana":
        return SanaObjective(cfg, inputs, device, folder)
    if kind in ("flux", "sd3"):
        from geomkit.train.objectives.flow import FlowObjective

        return FlowObjective(cfg, inputs, device, folder, kind)
    return DiffusionObjective(cfg, inputs, device, folder, sdxl=kind == "sdxl")


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
    """Once latents are cached the VAE encoder is never used again: drop it (under --crop random
    it encodes every step's crops and stays). Validation decodes only; without validation
    prompts and with no encoding left to do, the VAE leaves the accelerator too."""
    if obj.latents.needs_encoder:
        return
    obj.vae.encoder = None
    if not obj.cfg.validation_prompts and obj.device.type != "cpu":
        obj.vae.to("cpu")
    if obj.device.type == "cuda":
        torch.cuda.empty_cache()


def _validation_folder(out_dir) -> Path:
    folder = Path(out_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ImageLatents:
    """What every image objective (SD/SDXL, SANA, FLUX/SD3) does once its VAE, files and resolution
    are known: the training latents (encoded once, or per step under random crops), the VAE's
    decoder dropped until validation needs it, and no pipeline built yet."""

    def _prepare_latents(self, kind: str) -> None:
        cfg, vae_cfg = self.cfg, self.vae.config
        self.latents = TrainingLatents(self.files, self.resolution, self.vae, self.device, flip_p=cfg.flip_p, crop=cfg.crop,
                                       kind=kind, scaling=float(vae_cfg.scaling_factor),
                                       shift=float(getattr(vae_cfg, "shift_factor", None) or 0.0))
        lean_vae(self)
        self._pipe = None

    @property
    def vae_encodes(self) -> int:
        return self.latents.encodes


def flow_matching_batch(obj, step: int, rank: int, world: int):
    """(template rows, batch) of one flow-matching step, as diffusers' SANA/FLUX/SD3 scripts with a
    uniform timestep density ("none" weighting): x_t = (1 - sigma) x_0 + sigma noise at the sigma
    of a uniformly drawn training timestep, target noise - x_0."""
    b = obj.cfg.batch_size
    gen, which, x0, _crops = _draw_common(obj, step, rank, world)
    x0 = x0.to(obj.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    indices = (torch.rand(b, generator=gen) * obj.noise_scheduler.config.num_train_timesteps).long()
    timesteps = obj.noise_scheduler.timesteps[indices].to(x0.device)
    sigmas = obj.noise_scheduler.sigmas[indices].to(x0.device, torch.float32).view(b, 1, 1, 1)
    noisy = (1.0 - sigmas) * x0 + sigmas * noise
    return which, {"noisy": noisy, "t": timesteps, "target": noise - x0}


def _draw_common(obj, step: int, rank: int, world: int):
    """Examples, flips, templates and latents of one step (the part every objective shares)."""
    cfg = obj.cfg
    n_img, b = len(obj.files), cfg.batch_size
    gen = step_generator(cfg.seed, step, rank)
    idx = torch.tensor(batch_indices(n_img, b, step, cfg.seed, rank, world))
    flips = (torch.rand(b, generator=gen) < cfg.flip_p).long() if cfg.flip_p > 0 else torch.zeros(b, dtype=torch.long)
    which = torch.randint(0, len(obj.templates), (b,), generator=gen)
    latents, crops = obj.latents.take(idx, flips, gen, cfg.seed, step, rank)
    return gen, which, latents, crops


class DiffusionObjective(ImageLatents):
    kind = "diffusion"

    def __init__(self, cfg, inputs: dict, device, folder: Path, sdxl: bool):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        self.cfg = cfg
        self.device = device
        self.folder = folder
        self.pipeline_class = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
        self.sdxl = sdxl
        self.files = inputs["files"]
        self.templates = inputs["templates"]

        self.text = ClipText(folder, device, half_dtype_for_encoders(cfg), cfg.progress, sdxl=sdxl)
        self.encoders = self.text.encoders

        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
        # frozen UNet in half precision under mixed precision, as the public scripts; the VAE in float32
        self.unet = _frozen(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), device, self.weight_dtype)
        self.denoiser, self.denoiser_name = self.unet, "unet"
        speed_options(self.unet, cfg, "UNet")
        self.vae = _frozen(AutoencoderKL.from_pretrained(folder, subfolder="vae"), device)
        self.noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = cfg.resolution or int(self.unet.config.sample_size) * self.vae_scale
        if self.resolution % self.vae_scale:
            raise GeomkitError(f"--resolution {self.resolution}: must be a multiple of the VAE's factor {self.vae_scale}")
        self._prepare_latents("kl")

    # ---- prompts --------------------------------------------------------------------------------
    def setup(self, slots) -> None:
        prompts = [t.format(expand_placeholder(self.cfg.placeholder, self.cfg.placeholder, self.cfg.num_vectors))
                   for t in self.templates]
        self.prompts = prompts
        self.template_ids = self.text.token_ids(prompts)
        new = set(slots[0].token_ids)
        lost = [p for p, row in zip(prompts, self.template_ids[0].tolist()) if not new & set(row)]
        if lost:
            raise GeomkitError(f"--templates: the placeholder is truncated away in {lost[0]!r}; shorten the template")
        if self.sdxl:  # the pipeline's own check that the UNet takes this many time ids
            r = self.resolution
            self.pipeline()._get_add_time_ids((r, r), (0, 0), (r, r), dtype=torch.float32,
                                              text_encoder_projection_dim=int(self.encoders[1].model.config.projection_dim))

    def time_ids(self, crops):
        """SDXL's add_time_ids per example: original size, crop top-left (from `crops`, rows of
        (height, width, top, left)) and the target size."""
        r = float(self.resolution)
        target = torch.tensor([[r, r]]).expand(crops.shape[0], 2)
        return torch.cat([crops.float(), target], dim=1).to(self.device)

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

    def condition(self, ids: list, vectors, slots, crops=None):
        """(encoder_hidden_states, added_cond_kwargs) for token ids, learned rows injected; SDXL's
        time ids from `crops` (rows of original height, width, crop top, left; default: an
        uncropped image of the training size)."""
        cond, pooled = self.text.encode(ids, vectors, slots)
        if not self.sdxl:
            return cond, None
        if crops is None:
            r = float(self.resolution)
            crops = torch.tensor([[r, r, 0.0, 0.0]]).expand(ids[0].shape[0], 4)
        return cond, {"text_embeds": pooled, "time_ids": self.time_ids(crops)}

    # ---- the loss -------------------------------------------------------------------------------
    def draw(self, step: int, rank: int = 0, world: int = 1) -> dict:
        """The step's whole batch: examples, flips, templates, latents, noise, timesteps (a pure
        function of seed, step and rank), as noisy latents, timesteps, targets and template rows."""
        b = self.cfg.batch_size
        gen, which, latents, crops = _draw_common(self, step, rank, world)
        latents = latents.to(self.device)
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
        return {"noisy": noisy, "t": t, "target": target, "which": which, "crops": crops}

    def micro_batches(self, step: int, rank: int, world: int, size: int) -> list:
        return split_batch(self.draw(step, rank, world), size)

    def predict(self, part: dict, vectors, slots):
        """The denoiser's prediction for a drawn (micro-)batch, the learned rows injected."""
        cond, added = self.condition([ids[part["which"]] for ids in self.template_ids], vectors, slots, part["crops"])
        kwargs = {}
        if added is not None:
            kwargs["added_cond_kwargs"] = {k: v.to(self.weight_dtype) for k, v in added.items()}
        return self.unet(part["noisy"].to(self.weight_dtype), part["t"], cond.to(self.weight_dtype), **kwargs).sample

    def loss(self, vectors, slots, step: int, rank: int = 0, world: int = 1, part=None):
        """The batch's MSE (or, given `part`, that micro-batch's mean), the learned rows injected."""
        part = self.draw(step, rank, world) if part is None else part
        return F.mse_loss(self.predict(part, vectors, slots).float(), part["target"].float())

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
            "templates": len(self.templates), "latents_cached": self.latents.cached_rows, "crop": self.cfg.crop,
            "prediction_type": self.noise_scheduler.config.prediction_type,
        }


class SanaObjective(ImageLatents):
    """SANA pipelines: flow matching on the DiT, the Gemma 2 text encoder's learned rows injected."""

    kind = "diffusion"
    MAX_SEQUENCE_LENGTH = SanaText.MAX_SEQUENCE_LENGTH

    def __init__(self, cfg, inputs: dict, device, folder: Path):
        from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel

        self.cfg, self.device, self.folder = cfg, device, folder
        self.pipeline_class = json.loads((folder / "model_index.json").read_text()).get("_class_name", "SanaPipeline")
        if cfg.placeholder != cfg.placeholder.lower():
            raise GeomkitError(f"--placeholder {cfg.placeholder}: SANA pipelines lower-case every prompt; use a lower-case placeholder")
        self.files, self.templates = inputs["files"], inputs["templates"]
        self.sdxl = False
        # Gemma 2 overflows in float16: under fp16 the SANA text encoder stays float32
        self.text = SanaText(folder, device, half_dtype_for_encoders(cfg, allow_fp16=False), cfg.progress)
        self.encoders = self.text.encoders
        self.chi = self.text.chi
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
        self.transformer = _frozen(SanaTransformer2DModel.from_pretrained(folder, subfolder="transformer"), device, self.weight_dtype)
        self.denoiser, self.denoiser_name = self.transformer, "transformer"
        speed_options(self.transformer, cfg, "transformer")
        self.vae = _frozen(AutoencoderDC.from_pretrained(folder, subfolder="vae"), device)
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        self.vae_scale = 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)
        self.resolution = cfg.resolution or int(self.transformer.config.sample_size) * self.vae_scale
        if self.resolution % self.vae_scale:
            raise GeomkitError(f"--resolution {self.resolution}: must be a multiple of the VAE's factor {self.vae_scale}")
        self._prepare_latents("dc")

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
        return self.text.encode(prompts, vectors, slots)

    def draw(self, step: int, rank: int = 0, world: int = 1) -> dict:
        """The step's whole batch (a pure function of seed, step and rank)."""
        which, batch = flow_matching_batch(self, step, rank, world)
        batch["prompts"] = [self.prompts[i] for i in which.tolist()]
        return batch

    def micro_batches(self, step: int, rank: int, world: int, size: int) -> list:
        return split_batch(self.draw(step, rank, world), size)

    def predict(self, part: dict, vectors, slots):
        embeds, mask = self.condition(part["prompts"], vectors, slots)
        return self.transformer(hidden_states=part["noisy"].to(self.weight_dtype), encoder_hidden_states=embeds.to(self.weight_dtype),
                                encoder_attention_mask=mask, timestep=part["t"], return_dict=False)[0]

    def loss(self, vectors, slots, step: int, rank: int = 0, world: int = 1, part=None):
        part = self.draw(step, rank, world) if part is None else part
        return F.mse_loss(self.predict(part, vectors, slots).float(), part["target"].float())

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
                "templates": len(self.templates), "latents_cached": self.latents.cached_rows, "crop": self.cfg.crop,
                "prediction_type": "flow_matching", "complex_human_instruction": bool(self.chi)}
