"""The token together with a LoRA on the frozen denoiser (pivotal tuning), and the DCO loss.

`LoraTrainable` is the second kind of trainable beside the token rows (see
`geomkit.train.trainables`): a peft adapter added to the denoiser's attention projections
(SD 1.x/2.x/SDXL: the UNet; SANA: its transformer) through diffusers' `add_adapter`, as the
diffusers DreamBooth-LoRA scripts do, with its own AdamW, learning rate and state. The adapter's
weights and their optimiser state are float32 whatever the denoiser's precision (diffusers'
`cast_training_params`). B starts at zero (peft's "gaussian" init, as those scripts), so at step 1
the model equals the frozen denoiser.

DCO (Direct Consistency Optimization, Lee et al. 2024): the reference is the same denoiser with
the adapter switched off (peft's switch: no second copy of the model), on the same noisy latents,
timesteps and conditioning, without gradients; loss = mean over examples of
-log sigmoid(-beta (err_model - err_ref)), each err the example's mean squared error (the DCO
paper's per-example definition; the official code takes the batch's mean error first, one sigmoid
per batch). No per-timestep weighting and beta 1000, as the official code's defaults.

Exports, beside the token files: `pytorch_lora_weights.safetensors` (diffusers' layout, written by
the pipeline class's own `save_lora_weights`, with peft's adapter config as metadata, so
`pipe.load_lora_weights(OUT)` reads rank and alpha) and, for UNet pipelines, `lora_kohya.safetensors`
(`lora_unet_*` keys with their alphas: A1111, ComfyUI and diffusers' kohya converter read it).
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from geomkit.errors import GeomkitError
from geomkit.generation import RUN_LORA
from geomkit.train.optim import ADAMW_BETAS, ADAMW_EPS, load_optimizer_state_tensors, optimizer_state_tensors

DEFAULT_TARGETS = "to_q,to_k,to_v,to_out.0"
LORA_WEIGHT_DECAY = 1e-2  # the DTI authors' DCO runs and diffusers' DreamBooth-LoRA SD script
DIFFUSERS_FILE = RUN_LORA  # one name for the file: generate looks for it in run folders
KOHYA_FILE = "lora_kohya.safetensors"


def target_list(spec) -> list:
    names = [t.strip() for t in str(spec).split(",") if t.strip()]
    if not names:
        raise GeomkitError("--lora-targets '': name the projections to adapt, e.g. to_q,to_k,to_v,to_out.0")
    return names


def matched_linears(denoiser, targets: list) -> dict:
    """{target: [nn.Linear, ...]} as peft matches target_modules (the module name's last parts)."""
    found = {t: [] for t in targets}
    for name, mod in denoiser.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        for t in targets:
            if name == t or name.endswith("." + t):
                found[t].append(mod)
    return found


def _attention_names(denoiser) -> list:
    """The projection names a user may target: Linear modules inside attention blocks, by their last part(s)."""
    names = set()
    for name, mod in denoiser.named_modules():
        if isinstance(mod, torch.nn.Linear) and (".attn" in name or "attention" in name):
            parts = name.split(".")
            names.add(".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1])
    return sorted(names)


def check_targets(denoiser, targets: list, rank: int, what: str) -> None:
    found = matched_linears(denoiser, targets)
    missing = [t for t, mods in found.items() if not mods]
    if missing:
        raise GeomkitError(f"--lora-targets: this pipeline's {what} has no linear module named {', '.join(missing)}; "
                           f"its attention projections are: {', '.join(_attention_names(denoiser)) or 'none'}")
    smallest = min(min(m.in_features, m.out_features) for mods in found.values() for m in mods)
    if rank > smallest:
        raise GeomkitError(f"--lora-rank {rank}: above the smallest targeted dimension ({smallest}) of this {what}; "
                           f"use at most {smallest}")


class LoraTrainable:
    kind = "lora"

    def __init__(self, denoiser, cfg, what: str = "denoiser"):
        from peft import LoraConfig

        self.denoiser, self.cfg = denoiser, cfg
        self.targets = target_list(cfg.lora_targets)
        check_targets(denoiser, self.targets, int(cfg.lora_rank), what)
        self.alpha = float(cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank)
        denoiser.add_adapter(LoraConfig(r=int(cfg.lora_rank), lora_alpha=self.alpha, target_modules=self.targets,
                                        lora_dropout=float(cfg.lora_dropout), init_lora_weights="gaussian"))
        self.named = [(n, p) for n, p in denoiser.named_parameters() if "lora_" in n]
        with torch.no_grad():
            for _, p in self.named:
                p.data = p.data.float()  # trained in float32 under any mixed precision
                p.requires_grad_(True)
        for name, mod in denoiser.named_modules():  # the frozen model is in eval mode; LoRA dropout trains
            if "lora_dropout" in name:
                mod.train()
        self.params = [p for _, p in self.named]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lora_lr, betas=ADAMW_BETAS, eps=ADAMW_EPS,
                                     weight_decay=LORA_WEIGHT_DECAY, foreach=False)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def active(self, step: int) -> bool:
        return True

    def set_lr(self, step: int) -> float:
        from geomkit.train.optim import lr_at

        lr = lr_at(step, self.cfg.lora_lr, self.cfg.steps, self.cfg.lr_schedule)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def state_tensors(self) -> dict:
        tensors = {f"lora.param.{n}": p.detach().cpu() for n, p in self.named}
        tensors.update(optimizer_state_tensors(self.opt, prefix="lora.opt"))
        return tensors

    def load_state_tensors(self, tensors: dict) -> None:
        missing = [n for n, _ in self.named if f"lora.param.{n}" not in tensors]
        if missing:
            raise GeomkitError("--resume: the checkpoint holds no LoRA weights for this run's adapter "
                               f"({len(missing)} missing, e.g. {missing[0]})")
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(tensors[f"lora.param.{n}"].to(p.device, p.dtype))
        load_optimizer_state_tensors(self.opt, tensors, prefix="lora.opt")

    @contextmanager
    def inference(self):
        """LoRA dropout off (e.g. for validation images), back on afterwards."""
        drops = [m for n, m in self.denoiser.named_modules() if "lora_dropout" in n]
        for m in drops:
            m.eval()
        try:
            yield
        finally:
            for m in drops:
                m.train()

    def log_fields(self, step: int) -> dict:
        return {"lora_lr": self.opt.param_groups[0]["lr"]}

    def describe(self) -> dict:
        return {"rank": int(self.cfg.lora_rank), "alpha": self.alpha, "targets": self.targets,
                "dropout": float(self.cfg.lora_dropout), "lr": float(self.cfg.lora_lr),
                "weight_decay": LORA_WEIGHT_DECAY, "parameters": self.n_params}

    # ---- files ---------------------------------------------------------------------------------
    def peft_state(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(self.denoiser).items()}

    def export(self, out: Path, pipeline_cls, component: str) -> list:
        """The diffusers-layout file (and, for a UNet, the kohya one) in `out`; the paths written."""
        from diffusers.utils import convert_state_dict_to_diffusers

        from geomkit.report import _umask

        out = Path(out)
        # alpha / r folded into B (lora_B / lora.up), the file's alpha then equals its rank: the file means
        # the same in every loader, those that ignore the adapter metadata (older diffusers, peft-only,
        # UIs reading this layout) included
        scale = self.alpha / float(self.cfg.lora_rank)
        peft = {k: (v * scale if ".lora_B." in k else v) for k, v in self.peft_state().items()}
        state = convert_state_dict_to_diffusers(peft)
        meta = dict(self.denoiser.peft_config["default"].to_dict(), lora_alpha=int(self.cfg.lora_rank))
        meta["target_modules"] = sorted(meta.get("target_modules") or [])
        with tempfile.TemporaryDirectory(dir=out, prefix=".lora-") as tmp:
            try:
                pipeline_cls.save_lora_weights(tmp, **{f"{component}_lora_layers": state,
                                                       f"{component}_lora_adapter_metadata": meta})
            except TypeError:  # diffusers before adapter metadata: the folded weights need none
                pipeline_cls.save_lora_weights(tmp, **{f"{component}_lora_layers": state})
            os.chmod(Path(tmp) / DIFFUSERS_FILE, 0o666 & ~_umask())
            os.replace(Path(tmp) / DIFFUSERS_FILE, out / DIFFUSERS_FILE)  # atomic: never half-written
        written = [out / DIFFUSERS_FILE]
        if component == "unet":
            written.append(self.export_kohya(out / KOHYA_FILE))
        return written

    def export_kohya(self, path: Path) -> Path:
        from diffusers.utils import convert_state_dict_to_kohya
        from safetensors.torch import save_file

        from geomkit.report import atomic_path

        kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in self.peft_state().items()})
        for key in kohya:  # the converter writes alpha = rank; the adapter's own alpha is what scales it
            if key.endswith(".alpha"):
                kohya[key] = torch.tensor(self.alpha, dtype=torch.float32)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in kohya.items()}, str(tmp),
                      metadata={"ss_network_dim": str(int(self.cfg.lora_rank)), "ss_network_alpha": f"{self.alpha:g}",
                                "ss_network_module": "networks.lora"})
        return path


def dco_loss(obj, part: dict, vectors, slots, beta: float):
    """DCO on a drawn (micro-)batch: the reference first (adapter off, no gradients), then the model."""
    denoiser = obj.denoiser
    with torch.no_grad():
        denoiser.disable_adapters()
        try:
            ref = obj.predict(part, [v.detach() for v in vectors], slots).float()
        finally:
            denoiser.enable_adapters()
    pred = obj.predict(part, vectors, slots).float()
    target = part["target"].float()
    dims = tuple(range(1, pred.ndim))
    err_model = ((pred - target) ** 2).mean(dim=dims)
    err_ref = ((ref - target) ** 2).mean(dim=dims)
    return -F.logsigmoid(-beta * (err_model - err_ref)).mean()


LN2 = math.log(2.0)
