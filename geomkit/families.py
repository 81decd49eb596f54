"""Per-architecture tables: where each uniform site name lives in a Hugging Face model.

Uniform site names (as in TransformerLens), resolved per family like pyvene's mapping tables:

    embed                  output of the token-embedding module (Gemma: already times sqrt(d))
    pos_embed              output of the learned absolute position embedding (absent under RoPE)
    embed_norm             BERT only: LayerNorm(word + position + type), the paper's LN(e + p)
    blocks.{i}.resid_pre   hidden state entering block i
    blocks.{i}.ln1         output of block i's first normalisation
    blocks.{i}.resid_post  hidden state leaving block i
    final_norm             the encoder's last normalisation (absent in post-norm BERT)

Each entry lists candidate module paths; the first one present wins, which is how one table
covers both the transformers 4.x layout (`text_model.encoder.layers`) and 5.x (`encoder.layers`).
Adding a family is adding one `Family(...)` row and, if its forward needs extra inputs, a
`call` function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    blocks: tuple[str, ...]
    embed: tuple[str, ...]
    ln1: str  # path inside one block
    norm: str  # "layernorm" | "rmsnorm"
    prenorm: bool
    positions: str  # "absolute" | "rope" | "relative" (T5's relative position buckets)
    pos_embed: tuple[str, ...] = ()
    final_norm: tuple[str, ...] = ()
    embed_norm: tuple[str, ...] = ()
    # The module the encoder is called through (its forward receives input_ids): "" is the model.
    root: tuple[str, ...] = ("",)
    # Where the sqrt(d) embedding multiplier lives, as an attribute of the embedding module.
    embed_scale_attr: Optional[str] = None
    # Site holding the first normalisation applied after positions are added: the paper's LN(e + p).
    first_norm_site: str = "blocks.0.ln1"
    notes: str = ""


CLIP_TEXT = Family(
    name="clip-text",
    model_types=("clip_text_model", "clip"),
    blocks=("text_model.encoder.layers", "encoder.layers"),
    embed=("text_model.embeddings.token_embedding", "embeddings.token_embedding"),
    pos_embed=("text_model.embeddings.position_embedding", "embeddings.position_embedding"),
    ln1="layer_norm1",
    final_norm=("text_model.final_layer_norm", "final_layer_norm"),
    norm="layernorm",
    prenorm=True,
    positions="absolute",
    notes="CLIP text encoder (SD1.x/2.x, SDXL's CLIP-L and bigG): pre-norm LayerNorm, learned positions.",
)

GEMMA = Family(
    name="gemma",
    model_types=("gemma", "gemma2", "gemma3", "gemma3_text"),
    blocks=("model.language_model.layers", "language_model.layers", "model.layers", "layers"),
    embed=(
        "model.language_model.embed_tokens",
        "language_model.embed_tokens",
        "model.embed_tokens",
        "embed_tokens",
    ),
    ln1="input_layernorm",
    final_norm=("model.language_model.norm", "language_model.norm", "model.norm", "norm"),
    norm="rmsnorm",
    prenorm=True,
    positions="rope",
    # Gemma 3's Gemma3TextScaledWordEmbedding multiplies by sqrt(d) inside its forward, so the
    # `embed` site already carries the factor; Gemma 1/2 multiply in the model's forward instead,
    # after the `embed` site (there embed_scale stays 1 here and `blocks.0.resid_pre` has it).
    embed_scale_attr="embed_scale",
    # Analyses run the transformer without the 262k-row LM head; the LM objective calls the
    # full model, whose forward passes input_ids on to this same root.
    root=("model.language_model", "language_model", "model", ""),
    notes="Gemma 2/3 (SANA's text encoder): pre-norm RMSNorm with sandwich norms, RoPE, no absolute positions.",
)

BERT = Family(
    name="bert",
    model_types=("bert",),
    blocks=("bert.encoder.layer", "encoder.layer"),
    embed=("bert.embeddings.word_embeddings", "embeddings.word_embeddings"),
    pos_embed=("bert.embeddings.position_embeddings", "embeddings.position_embeddings"),
    embed_norm=("bert.embeddings.LayerNorm", "embeddings.LayerNorm"),
    # Post-norm: the first normalisation inside a block comes after attention.
    ln1="attention.output.LayerNorm",
    norm="layernorm",
    prenorm=False,
    positions="absolute",
    first_norm_site="embed_norm",
    notes="BERT (all-MiniLM-L6-v2): post-norm LayerNorm, learned positions; embeddings are LN(e + p + type).",
)

WHISPER_DECODER = Family(
    name="whisper-decoder",
    model_types=("whisper",),
    blocks=("model.decoder.layers", "decoder.layers"),
    embed=("model.decoder.embed_tokens", "decoder.embed_tokens"),
    pos_embed=("model.decoder.embed_positions", "decoder.embed_positions"),
    ln1="self_attn_layer_norm",
    final_norm=("model.decoder.layer_norm", "decoder.layer_norm"),
    norm="layernorm",
    prenorm=True,
    positions="absolute",
    root=("model.decoder", "decoder"),
    notes="Whisper text decoder: pre-norm LayerNorm with learned positions, the closest reachable relative of CLIP.",
)

T5_ENCODER = Family(
    name="t5-encoder",
    model_types=("t5", "mt5"),
    blocks=("encoder.block",),
    # `shared` and `encoder.embed_tokens` hold the same weight; the hook goes on the module the
    # encoder's forward calls
    embed=("encoder.embed_tokens", "shared"),
    ln1="layer.0.layer_norm",
    final_norm=("encoder.final_layer_norm",),
    norm="rmsnorm",
    prenorm=True,
    positions="relative",
    # the encoder stack itself: T5EncoderModel.forward and T5Stack.forward both take input_ids
    root=("encoder", ""),
    notes="T5 v1.1 encoder (FLUX.1's and SD3's T5-XXL): pre-norm RMSNorm, relative position buckets "
          "(a learned bias on attention logits, block 0 only), no absolute positions.",
)

UMT5_ENCODER = Family(
    name="umt5-encoder",
    model_types=("umt5",),
    blocks=T5_ENCODER.blocks,
    embed=T5_ENCODER.embed,
    ln1=T5_ENCODER.ln1,
    final_norm=T5_ENCODER.final_norm,
    norm="rmsnorm",
    prenorm=True,
    positions="relative",
    root=T5_ENCODER.root,
    notes="umT5 encoder (Wan2.1's text encoder): as T5, with a relative position bias in every block.",
)

FAMILIES: tuple[Family, ...] = (CLIP_TEXT, GEMMA, BERT, WHISPER_DECODER, T5_ENCODER, UMT5_ENCODER)


def has_absolute_positions(fam: Family) -> bool:
    """False for RoPE and relative-position (T5) families: no position vector is added to the
    token embedding, so there is no LN(e + p)."""
    return fam.positions == "absolute"


def family_for(model_type: str) -> Optional[Family]:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return None


def find_module(model, candidates: Sequence[str]):
    """First candidate path that exists on `model` ("" is the model itself), else None."""
    for path in candidates:
        mod = model
        try:
            for part in filter(None, path.split(".")):
                mod = getattr(mod, part) if not part.isdigit() else mod[int(part)]
        except (AttributeError, IndexError, TypeError):
            continue
        return mod
    return None


def supported_model_types() -> list[str]:
    return sorted({t for fam in FAMILIES for t in fam.model_types})

