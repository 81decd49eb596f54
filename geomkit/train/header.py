"""The lines `geomkit train` prints before its progress bar: what is about to run, so a newcomer
sees the device, the data, the resolution, m* per text encoder, the effective batch, the precision
and the flags before the first (often slow) step, as the diffusers scripts do.

`header_lines` takes plain values (tested on its own); `from_session` gathers them from a run."""

from __future__ import annotations

from typing import Optional, Sequence


def header_lines(*, method: str, objective: str, model: str, device: str, processes: int, steps: int, start: int,
                 batch_size: int, micro_batch: Optional[int], precision: str, m_stars: Sequence[float],
                 described: dict, flags: Sequence[str] = (), placeholder: str = "") -> list[str]:
    """Two or three short lines: run, data, optimisation."""
    effective = batch_size * max(1, processes)
    batch = f"batch {effective}" + (f" ({batch_size} x {processes} processes)" if processes > 1 else "")
    if micro_batch and micro_batch != batch_size:
        batch += f", micro-batches of {micro_batch}"
    if objective == "diffusion" or "images" in described:
        data = f"{described.get('images', '?')} images at {described.get('resolution', '?')} px"
        if described.get("sdxl"):
            data += " (SDXL: two text encoders)"
    else:
        data = f"{described.get('sentences', '?')} sentences"
    mstar = ", ".join(f"{m:.4g}" for m in m_stars)
    where = f"steps {start + 1}..{steps} (resumed at {start})" if start else f"{steps} steps"
    lines = [
        f"train {method} ({objective}) {placeholder} on {model}: {where}, device {device}"
        + (f" x {processes} processes" if processes > 1 else ""),
        f"data: {data}; m* per text encoder: {mstar}",
        f"{batch}, precision {precision if precision != 'no' else 'float32'}" + (f"; {', '.join(flags)}" if flags else ""),
    ]
    return lines


def from_session(cfg, obj, slots, sess, dist, start: int = 0) -> list[str]:
    """`header_lines` for a trainer session (cfg, objective, slots, session, process layout)."""
    flags = [name for name, on in (("gradient checkpointing", cfg.gradient_checkpointing), ("torch.compile", cfg.compile),
                                   (f"validation every {cfg.validation_steps} steps", bool(cfg.validation_prompts and cfg.validation_steps)),
                                   (f"checkpoint every {cfg.save_every} steps", bool(cfg.save_every)),
                                   (f"logging to {getattr(cfg, 'report_to', None)}", bool(getattr(cfg, "report_to", None))))
             if on]
    try:
        described = dict(obj.describe())
    except Exception:  # a description is a courtesy; never let it stop a run
        described = {}
    return header_lines(method=cfg.method, objective=obj.kind, model=str(cfg.model), device=str(dist.device),
                        processes=int(dist.world), steps=int(cfg.steps), start=int(start), batch_size=int(cfg.batch_size),
                        micro_batch=sess.micro_batch, precision=cfg.mixed_precision, m_stars=[float(s.m_star) for s in slots],
                        described=described, flags=flags, placeholder=cfg.placeholder)
