"""The trained token in the formats the ecosystem loads.

- `learned_embeds.safetensors`: diffusers' `{placeholder: float32 (n_vectors, d)}`, for
  `pipe.load_textual_inversion(path)` (SD 1.x/2.x; SDXL's first encoder);
- SDXL also `learned_embeds_2.safetensors` (encoder 2, same format) and
  `learned_embeds_sdxl.safetensors` = `{"clip_l": (n, 768), "clip_g": (n, 1280)}` as kohya, A1111
  and ComfyUI write it; diffusers loads that with one call per encoder:

      from safetensors.torch import load_file
      state = load_file("learned_embeds_sdxl.safetensors")
      pipe.load_textual_inversion(state["clip_l"], token="<tok>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
      pipe.load_textual_inversion(state["clip_g"], token="<tok>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)

- FLUX.1: `learned_embeds_flux.safetensors` = `{"clip_l": (n, 768), "t5": (n, 4096)}` (the trained
  encoders only, under `--encoders`), loaded the same way into (text_encoder, tokenizer) and
  (text_encoder_2, tokenizer_2); SD3.x: `learned_embeds_sd3.safetensors` = `{"clip_l", "clip_g", "t5"}`
  (diffusers' SD3 pipeline has no `load_textual_inversion`: README shows the rows written by hand).
"""

from __future__ import annotations

from pathlib import Path

from geomkit.embeddings_io import save_learned, save_parts, save_sdxl_pair

EMBEDS = "learned_embeds.safetensors"
EMBEDS_2 = "learned_embeds_2.safetensors"
EMBEDS_SDXL = "learned_embeds_sdxl.safetensors"


def export(out_dir, placeholder: str, rows: list, stem: str = "learned_embeds", labels=None, kind=None) -> list[Path]:
    """Write the learned rows (one (n, d) tensor per text encoder); the paths written. FLUX/SD3
    runs (`kind`, with each row's encoder `labels`) write `{stem}_{kind}.safetensors` with keys
    `clip_l`/`clip_g`/`t5`, and one diffusers file per encoder, `{stem}_{label}.safetensors`."""
    out = Path(out_dir)
    if kind in ("flux", "sd3"):
        written = [save_parts(out / f"{stem}_{kind}.safetensors", dict(zip(labels, rows)))]
        return written + [save_learned(out / f"{stem}_{lab}.safetensors", placeholder, r) for lab, r in zip(labels, rows)]
    written = [save_learned(out / f"{stem}.safetensors", placeholder, rows[0])]
    if len(rows) == 2:
        written.append(save_learned(out / f"{stem}_2.safetensors", placeholder, rows[1]))
        written.append(save_sdxl_pair(out / f"{stem}_sdxl.safetensors", rows[0], rows[1]))
    return written


def rescale(rows, m_star: float):
    """TI-rescaled: every row set to norm m* (its direction kept)."""
    return rows / rows.norm(dim=-1, keepdim=True) * m_star
