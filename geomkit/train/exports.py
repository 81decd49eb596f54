"""The trained token in the formats the ecosystem loads.

- `learned_embeds.safetensors`: diffusers' `{placeholder: float32 (n_vectors, d)}`, for
  `pipe.load_textual_inversion(path)` (SD 1.x/2.x; SDXL's first encoder);
- SDXL also `learned_embeds_2.safetensors` (encoder 2, same format) and the pair file
  `{"clip_l": (n, 768), "clip_g": (n, 1280)}` as kohya, A1111 and ComfyUI write it, NAMED AFTER THE
  TOKEN (A1111 and ComfyUI take the trigger word from the file name: `<my-dog>` ->
  `my-dog.safetensors`) and carrying the token in its header metadata ("token"). Runs written
  before this read as before: `sdxl_file` also finds the old `learned_embeds_sdxl.safetensors`.
  diffusers loads the pair with one call per encoder:

      from safetensors.torch import load_file
      state = load_file("my-dog.safetensors")
      pipe.load_textual_inversion(state["clip_l"], token="<my-dog>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
      pipe.load_textual_inversion(state["clip_g"], token="<my-dog>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)

- FLUX.1: `learned_embeds_flux.safetensors` = `{"clip_l": (n, 768), "t5": (n, 4096)}` (the trained
  encoders only, under `--encoders`), loaded the same way into (text_encoder, tokenizer) and
  (text_encoder_2, tokenizer_2); SD3.x: `learned_embeds_sd3.safetensors` = `{"clip_l", "clip_g", "t5"}`
  (diffusers' SD3 pipeline has no `load_textual_inversion`: README shows the rows written by hand).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from geomkit.embeddings_io import save_learned, save_parts, save_sdxl_pair, token_file_name

EMBEDS = "learned_embeds.safetensors"
EMBEDS_2 = "learned_embeds_2.safetensors"
EMBEDS_SDXL = "learned_embeds_sdxl.safetensors"  # the pair's name before it was named after the token (still read)
RESERVED = ("learned_embeds", "learned_embeds_2", "learned_embeds_unrescaled", "learned_embeds_unrescaled_2",
            "config", "results", "train_log")


def sdxl_name(placeholder: str, stem: str = "learned_embeds") -> str:
    """The pair file's name for a token: the token (see `token_file_name`), with `_unrescaled`
    for the unrescaled export; the old name where the token leaves nothing usable or would
    collide with the run's other files."""
    suffix = stem[len("learned_embeds"):] if stem.startswith("learned_embeds") else f"_{stem}"
    name = token_file_name(placeholder, suffix + ".safetensors", fallback="")
    if not name or name == suffix + ".safetensors" or Path(name).stem in RESERVED:
        return f"{stem}_sdxl.safetensors"
    return name


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
        written.append(save_sdxl_pair(out / sdxl_name(placeholder, stem), rows[0], rows[1], token=placeholder))
    return written


def sdxl_file(run_dir, placeholder: Optional[str] = None) -> Optional[Path]:
    """The SDXL clip_l/clip_g file of a run folder: named after its token, or the old
    learned_embeds_sdxl.safetensors; None for a single-encoder run."""
    run = Path(run_dir)
    names = ([sdxl_name(placeholder)] if placeholder else []) + [EMBEDS_SDXL]
    return next((run / n for n in names if (run / n).is_file()), None)


def rescale(rows, m_star: float):
    """TI-rescaled: every row set to norm m* (its direction kept)."""
    return rows / rows.norm(dim=-1, keepdim=True) * m_star
