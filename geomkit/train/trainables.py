"""What a run trains, as separate trainables, each with its own parameters, optimiser and state:

- `TokenRows`: the learned token rows of every text encoder (`geomkit.train.params.Slot`), with
  their method's optimiser (DTI: Riemannian SGD; TI and the rest: AdamW variants) and learning
  rate; `--token-steps N` stops them after step N (the "pivot" of pivotal tuning);
- `geomkit.train.lora.LoraTrainable`: a LoRA on the frozen denoiser (`--lora-rank`).

The loop treats them alike: one backward, one all-reduce over all their gradients, one finiteness
check, then each active trainable's optimiser steps. Checkpoint tensors are keyed by trainable
(`param.*`/`opt.*` for the token rows, as before; `lora.*` for the LoRA).
"""

from __future__ import annotations

from geomkit.train.optim import load_optimizer_state_tensors, lr_at, make_optimizer, optimizer_state_tensors


class TokenRows:
    kind = "token"

    def __init__(self, slots, cfg, base_lr: float):
        self.slots, self.cfg, self.base_lr = slots, cfg, float(base_lr)
        self.params = [s.param for s in slots]
        self.opt = make_optimizer(cfg.method, slots, base_lr, cfg.kappa, cfg.weight_decay)

    def active(self, step: int) -> bool:
        return self.cfg.token_steps is None or step <= self.cfg.token_steps

    def lr(self, step: int) -> float:
        return lr_at(step, self.base_lr, self.cfg.steps, self.cfg.lr_schedule)

    def set_lr(self, step: int) -> float:
        lr = self.lr(step) if self.active(step) else 0.0
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def vectors(self, step: int) -> list:
        """The rows for this step's forward: in the graph while the token trains, constants after."""
        rows = [s.vectors() for s in self.slots]
        return rows if self.active(step) else [r.detach() for r in rows]

    def state_tensors(self) -> dict:
        tensors = {f"param.{i}": p.detach().cpu() for i, p in enumerate(self.params)}
        tensors.update(optimizer_state_tensors(self.opt))
        return tensors

    def load_state_tensors(self, tensors: dict) -> None:
        import torch

        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(tensors[f"param.{i}"].to(p.device, p.dtype))
        load_optimizer_state_tensors(self.opt, tensors)

    def log_fields(self, step: int) -> dict:
        return {}
