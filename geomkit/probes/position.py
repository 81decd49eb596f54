"""Effect I (Fig. 2): can a token's absolute position be read from LN(e + p)?

A 2-layer MLP probe is trained on a FROZEN encoder to predict each token's position from the
vector at one site (default: the family's `first_norm_site`, the paper's LN(e + p); for BERT the
embedding LayerNorm, for CLIP/Whisper block 0's first LayerNorm; RoPE models such as Gemma have
no LN(e + p), so there the default is `blocks.3.resid_post`, after 4 blocks), over all positions of the
training prompts. It is then evaluated on held-out prompts where ONE token's embedding is replaced:

- by itself times m (`scaled`, norm mode `multiply`, the default): Lemma 1 says LN(m e + p)
  forgets p as m grows; or by its own direction at norm m exactly (norm mode `absolute`,
  row / ||row|| * m, as the DTI authors' notebook does);
- by a learned embedding (`learned`): the vector stands in place of the content word, as it is
  (both norm modes).

Protocol `content` (the default) is described next; protocol `single` follows the authors'
notebook instead: `SINGLE_DRAWS` inputs, each ONE random vocabulary token in the tokenizer's
one-token template (BOS/CLS/EOS kept), read at that token's position (see `single_token_inputs`).

How tokens are replaced under `content` (both cases): for every held-out prompt and every content position j
(not a special token such as BOS/CLS/EOS/SEP, and j < n_positions), one copy of the prompt is run
with the embedding-table output at j replaced through `geomkit.hooks.inject`; the probe reads
the site vector at j and must answer j. Accuracy is computed per position and then averaged over
positions, so short early positions do not dominate. The replaced word is thus every content
word in turn; its neighbours and the sequence length are unchanged.

Labels are indices in right-padded rows (see `geomkit.probes.prompts`): absolute positions.
Only positions present in at least `min_support` training prompts get a class; tokens beyond
are left out of training and evaluation (their count is reported).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from geomkit.errors import GeomkitError
from geomkit.hooks import inject, resolve_site, run_with_cache
from geomkit.probes._threads import single_thread
from geomkit.probes.prompts import Tokenized, pad_id, pad_right

PROBE_FILE = "probe.safetensors"
CONFIG_FILE = "config.json"


# ---- sites -------------------------------------------------------------------------------------
ROPE_BLOCK = 3  # RoPE models: probe after 4 blocks (the site `geomkit reproduce` uses for Gemma)


def rope_site(enc) -> str:
    """The site probed on a RoPE model when none is given: `blocks.3.resid_post` (or the last
    block of a shallower model). RoPE adds no position vector, so there is no LN(e + p); position
    can only be read after attention has mixed it in."""
    return f"blocks.{min(ROPE_BLOCK, enc.n_blocks - 1)}.resid_post"


def choose_site(enc, site: Optional[str] = None) -> tuple[str, Optional[str]]:
    """(site, why) - `site` if given (checked; why is None), else the family's LN(e + p), or on a
    RoPE model `rope_site(enc)` with a one-sentence reason."""
    why = None
    if site is None:
        if enc.family.positions in ("rope", "relative"):
            site = rope_site(enc)
            scheme = "RoPE" if enc.family.positions == "rope" else "relative position buckets"
            why = (
                f"{enc.name} uses {scheme} (no absolute position embeddings, so no LN(e + p)): probing after "
                f"{int(site.split('.')[1]) + 1} blocks at {site}; --site blocks.K.resid_post picks another block"
            )
        else:
            site = enc.family.first_norm_site
            why = f"the first normalisation after position embeddings are added (LN(e + p)): {site}"
    resolve_site(enc, site)  # one-line GeomkitError for a site the model lacks
    return site, why


def default_site(enc, site: Optional[str] = None) -> str:
    """The site to probe: `site` if given (checked), else the family's LN(e + p); RoPE families,
    which have none, get `rope_site(enc)` (after 4 blocks)."""
    return choose_site(enc, site)[0]


def safe_name(text: str) -> str:
    """A file-system-safe rendering of a model or site name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "model"


def default_probe_dir(out) -> Path:
    """Where `geomkit probe-position` saves its probe unless told: inside its --out folder."""
    return Path(out) / "probe"


# ---- features ------------------------------------------------------------------------------------
@dataclass
class Features:
    x: torch.Tensor  # (N, d) float32 site vectors
    position: torch.Tensor  # (N,) long
    row: torch.Tensor  # (N,) long: prompt index
    special: torch.Tensor  # (N,) bool


def site_features(enc, tok: Tokenized, site: str, batch_size: int = 64) -> Features:
    """Site vectors of every non-padding token of every prompt (a plain forward, early stop)."""
    from geomkit.report import progress

    xs, pos, rows, spec = [], [], [], []
    pid = pad_id(enc)
    with torch.no_grad():
        for start in progress(range(0, len(tok.ids), batch_size), desc=f"reading {site} of {len(tok.ids)} prompts", unit="batch"):
            chunk = tok.ids[start : start + batch_size]
            ids, mask = pad_right(chunk, pid)
            _, cache = run_with_cache(enc, ids, mask, sites=[site], stop=True, dtype=torch.float32)
            act = cache[site]
            for r, seq in enumerate(chunk):
                n = len(seq)
                xs.append(act[r, :n])
                pos.append(torch.arange(n))
                rows.append(torch.full((n,), start + r, dtype=torch.long))
                spec.append(torch.as_tensor(tok.special[start + r][:n], dtype=torch.bool))
    return Features(torch.cat(xs), torch.cat(pos), torch.cat(rows), torch.cat(spec))


def supported_positions(tok: Tokenized, min_support: int = 5) -> int:
    """Number of leading positions present in at least `min_support` prompts (>= 1)."""
    lengths = sorted((len(s) for s in tok.ids), reverse=True)
    if not lengths:
        return 0
    k = min(min_support, len(lengths))
    return max(1, lengths[k - 1])


# ---- the probe -----------------------------------------------------------------------------------
class PositionProbe(nn.Module):
    """Standardise -> Linear(d, hidden) -> ReLU -> Linear(hidden, n_positions)."""

    def __init__(self, d_model: int, n_positions: int, hidden: int = 256):
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_model))
        self.register_buffer("std", torch.ones(d_model))
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, n_positions)
        self.d_model, self.n_positions, self.hidden = d_model, n_positions, hidden

    def forward(self, x):
        z = (x.to(self.mean.dtype) - self.mean) / self.std
        return self.fc2(torch.relu(self.fc1(z)))

    @torch.no_grad()
    def predict(self, x, batch: int = 8192) -> torch.Tensor:
        self.eval()
        return torch.cat([self(x[i : i + batch]).argmax(-1) for i in range(0, x.shape[0], batch)]) if len(x) else x.new_zeros(0, dtype=torch.long)


def train_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    n_positions: int,
    *,
    hidden: int = 256,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> PositionProbe:
    """Mini-batch Adam on cross-entropy with a cosine learning-rate decay; deterministic for a seed.

    Runs on one CPU thread: the matrices are small, and multi-threaded tiny matmuls on a busy
    2-core machine were measured 20-70x slower than a single thread."""
    if x.shape[0] == 0:
        raise GeomkitError("no training tokens: the prompt set is empty after tokenisation")
    x = x.to(torch.float32)
    with single_thread():
        return _train(x, y, n_positions, hidden, epochs, batch_size, lr, weight_decay, seed)


def _train(x, y, n_positions, hidden, epochs, batch_size, lr, weight_decay, seed) -> PositionProbe:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = PositionProbe(x.shape[1], n_positions, hidden)
        probe.mean.copy_(x.mean(0))
        probe.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
        opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = max(1, math.ceil(x.shape[0] / batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        probe.train()
        from geomkit.report import progress

        for _ in progress(range(epochs), desc=f"training the position probe ({x.shape[0]} tokens)", unit="epoch"):
            order = torch.randperm(x.shape[0], generator=gen)
            for i in range(0, x.shape[0], batch_size):
                idx = order[i : i + batch_size]
                loss = nn.functional.cross_entropy(probe(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    probe.eval().requires_grad_(False)
    return probe


def save_probe(folder, probe: PositionProbe, config: dict) -> Path:
    """probe.safetensors + config.json (both atomic) in `folder`."""
    from geomkit import report

    folder = Path(folder)
    cfg = dict(config, d_model=probe.d_model, n_positions=probe.n_positions, hidden=probe.hidden, format="geomkit-position-probe/1")
    report.save_tensors(folder / PROBE_FILE, probe.state_dict(), metadata={"format": cfg["format"]})
    report.write_json(folder / CONFIG_FILE, cfg)
    return folder


def load_probe(folder, enc=None, site: Optional[str] = None, flag: str = "--load-probe") -> tuple[PositionProbe, dict]:
    """A probe saved by `save_probe` and its config. Given `enc` and `site`, it must have been
    trained on that model's width at that site (else one line naming `flag`)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / PROBE_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise GeomkitError(f"{flag} {folder}: no saved probe ({PROBE_FILE} + {CONFIG_FILE})")
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        probe = PositionProbe(int(cfg["d_model"]), int(cfg["n_positions"]), int(cfg["hidden"]))
        probe.load_state_dict(load_file(str(folder / PROBE_FILE)))
    except Exception as exc:  # damaged JSON or weights, missing keys, shapes that do not fit
        raise GeomkitError(f"{flag} {folder}: not a readable saved probe ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if enc is not None and (cfg.get("site") != site or int(cfg.get("d_model", -1)) != enc.d_model):
        raise GeomkitError(
            f"{flag} {folder}: probe was trained on {cfg.get('model')} at {cfg.get('site')} (d={cfg.get('d_model')}), "
            f"not {enc.name} at {site} (d={enc.d_model}); train one with `geomkit probe-position`"
        )
    return probe.eval().requires_grad_(False), cfg


# ---- evaluation ----------------------------------------------------------------------------------
@dataclass
class Accuracy:
    accuracy: float  # mean over positions of the per-position accuracy
    per_position: dict = field(default_factory=dict)  # position -> accuracy
    count: int = 0  # evaluated (prompt, position) pairs


def macro_accuracy(pred: torch.Tensor, target: torch.Tensor) -> Accuracy:
    per = {}
    for p in sorted(set(target.tolist())):
        sel = target == p
        per[int(p)] = float((pred[sel] == p).double().mean())
    acc = sum(per.values()) / len(per) if per else float("nan")
    return Accuracy(acc, per, int(target.numel()))


def content_slots(tok: Tokenized, n_positions: int) -> list[tuple[int, int]]:
    """(prompt index, position) of every non-special token at a position the probe knows."""
    return [
        (r, j)
        for r, (seq, spec) in enumerate(zip(tok.ids, tok.special))
        for j in range(min(len(seq), n_positions))
        if not spec[j]
    ]


def evaluate_replaced(
    enc,
    probe: PositionProbe,
    tok: Tokenized,
    site: str,
    replacement: Optional[Callable[[int], torch.Tensor]],
    *,
    slots: Optional[Sequence[tuple[int, int]]] = None,
    batch_size: int = 64,
) -> Accuracy:
    """Probe accuracy at each slot (prompt, position) when that one token's embedding-table row is
    replaced by `replacement(token_id)` (raw-table space); None replaces nothing (baseline)."""
    slots = list(content_slots(tok, probe.n_positions) if slots is None else slots)
    if not slots:
        raise GeomkitError("no content tokens to evaluate: the held-out prompts have none within the probe's positions")
    pid = pad_id(enc)
    preds, targets = [], []
    with torch.no_grad():
        for start in range(0, len(slots), batch_size):
            part = slots[start : start + batch_size]
            ids, attn = pad_right([tok.ids[r] for r, _ in part], pid)
            rows = torch.arange(len(part))
            cols = torch.as_tensor([j for _, j in part], dtype=torch.long)
            if replacement is None:
                _, cache = run_with_cache(enc, ids, attn, sites=[site], stop=True, dtype=torch.float32)
            else:
                mask = torch.zeros(ids.shape, dtype=torch.bool)
                mask[rows, cols] = True
                vecs = torch.stack([replacement(int(ids[r, j])) for r, j in zip(rows.tolist(), cols.tolist())])
                with inject(enc, vecs.to(enc.dtype), mask=mask):
                    _, cache = run_with_cache(enc, ids, attn, sites=[site], stop=True, dtype=torch.float32)
            feats = cache[site][rows, cols]
            preds.append(probe.predict(feats))
            targets.append(cols)
    return macro_accuracy(torch.cat(preds), torch.cat(targets))


NORM_MODES = ("multiply", "absolute")
PROTOCOLS = ("content", "single")
SINGLE_DRAWS = 1000  # the authors' notebook: 10 batches of 100 random tokens


def scale_axis_label(norm_mode: str = "multiply") -> str:
    """What m means on the x-axis: a factor on the token's own row, or the norm it is set to."""
    check_choice(norm_mode, NORM_MODES, "--norm-mode")
    return "scale m (row x m)" if norm_mode == "multiply" else "norm m (||e|| = m)"


def check_choice(value: str, choices: Sequence[str], flag: str) -> str:
    if value not in choices:
        raise GeomkitError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    return value


def scaled_replacement(enc, m: float, norm_mode: str = "multiply") -> Callable[[int], torch.Tensor]:
    """The replaced token's vector (raw-table space, before Gemma's sqrt(d)) for scale m:
    - `multiply`: its own row times m (norm m * ||row||);
    - `absolute`: its own direction at norm m exactly (row / ||row|| * m, computed in float64),
      as the DTI authors' notebook does (`tok_embeds / tok_embeds.norm(...) * target_scale`).
    An all-zero row has no direction: `absolute` refuses it with one line."""
    check_choice(norm_mode, NORM_MODES, "--norm-mode")
    table = enc.embedding_table()
    if norm_mode == "multiply":
        return lambda token_id: table[token_id].to(torch.float32) * float(m)

    def absolute(token_id: int) -> torch.Tensor:
        row = table[token_id].to(torch.float64)
        n = row.norm()
        if not n > 0:
            raise GeomkitError(f"token id {token_id} has an all-zero embedding row: it has no direction to set to norm {m} "
                               "(--norm-mode absolute); use --norm-mode multiply")
        return (row / n * float(m)).to(torch.float32)

    return absolute


@dataclass
class SingleTokenInputs:
    """The `single` protocol's inputs: `draws` copies of the model's one-token template
    (its leading special tokens, ONE random vocabulary token, its trailing special tokens),
    evaluated at that token's slot only."""

    tok: Tokenized
    slots: list  # [(row, position)]: one per draw, all at `position`
    position: int  # the first content position (1 after a BOS/CLS, 0 without one)
    template: list  # the ids around the slot, the slot as None
    token_ids: list  # the drawn vocabulary ids, in row order
    candidates: int  # how many ids could be drawn


def single_token_inputs(enc, draws: int = SINGLE_DRAWS, seed: int = 0) -> SingleTokenInputs:
    """`draws` one-token inputs, each holding a vocabulary id drawn uniformly (with replacement,
    seeded by `seed`) from the embedding table's rows that are neither the tokenizer's special
    tokens nor all-zero rows. The template is how the tokenizer wraps a one-token prompt ("a"):
    CLIP [BOS, x, EOS], BERT [CLS, x, SEP], Gemma [BOS, x]; x sits at the first content position."""
    from geomkit.probes.prompts import tokenize

    if draws < 1:
        raise GeomkitError(f"{draws} draws: the single protocol needs at least 1")
    t = tokenize(enc, ["a"])
    ids, spec = t.ids[0], t.special[0]
    content = [i for i, s in enumerate(spec) if not s]
    if not content:
        raise GeomkitError(f"{enc.name}: the tokenizer gives no content token for a one-word prompt; the single protocol needs one")
    j0, j1 = content[0], content[-1]
    lead, trail = list(ids[:j0]), list(ids[j1 + 1 :])
    lead_s, trail_s = list(spec[:j0]), list(spec[j1 + 1 :])
    table = enc.embedding_table()
    ok = table.detach().to(torch.float32).abs().amax(dim=1) > 0
    for sid in getattr(enc.tokenizer, "all_special_ids", []) or []:
        if 0 <= int(sid) < ok.numel():
            ok[int(sid)] = False
    cand = ok.nonzero().squeeze(1)
    if cand.numel() == 0:
        raise GeomkitError(f"{enc.name}: no non-special, non-zero embedding rows to draw from")
    gen = torch.Generator().manual_seed(int(seed))
    picks = cand[torch.randint(cand.numel(), (int(draws),), generator=gen)].tolist()
    seqs = [lead + [int(x)] + trail for x in picks]
    special = [lead_s + [False] + trail_s for _ in picks]
    return SingleTokenInputs(Tokenized(seqs, special), [(r, j0) for r in range(len(picks))], j0,
                             lead + [None] + trail, picks, int(cand.numel()))


def fixed_replacement(vector: torch.Tensor) -> Callable[[int], torch.Tensor]:
    v = vector.detach().to(torch.float32)
    return lambda token_id: v


# ---- the whole experiment ------------------------------------------------------------------------
@dataclass
class PositionResult:
    model: str
    site: str
    n_positions: int
    chance: float
    baseline_accuracy: float
    scales: list
    accuracy: list
    embeddings: dict
    train_accuracy: float = float("nan")
    baseline_all_tokens: float = float("nan")
    per_position_baseline: dict = field(default_factory=dict)
    per_position: dict = field(default_factory=dict)  # str(scale) -> {pos: acc}
    embedding_norm_ratio: dict = field(default_factory=dict)
    n_train_prompts: int = 0
    n_heldout_prompts: int = 0
    n_train_tokens: int = 0
    n_heldout_slots: int = 0
    dropped_tokens: int = 0
    mean_vocab_norm: float = float("nan")
    norm_mode: str = "multiply"
    protocol: str = "content"
    single: dict = field(default_factory=dict)  # the single protocol's draws (empty for content)

    def results_json(self) -> dict:
        averaging = (
            "per-position accuracy at content (non-special) tokens of held-out prompts, averaged over positions"
            if self.protocol == "content" else
            f"accuracy at position {self.single.get('position')} of {self.single.get('draws')} one-token inputs "
            "(one random vocabulary token each; see `single`)"
        )
        out = {
            "model": self.model,
            "site": self.site,
            "n_positions": self.n_positions,
            "chance": self.chance,
            "baseline_accuracy": self.baseline_accuracy,
            "norm_mode": self.norm_mode,
            "protocol": self.protocol,
            "scales": self.scales,
            "scales_axis": scale_axis_label(self.norm_mode),
            "accuracy": self.accuracy,
            "embeddings": self.embeddings,
            "train_accuracy": self.train_accuracy,
            "baseline_accuracy_all_tokens": self.baseline_all_tokens,
            "embedding_norm_ratio": self.embedding_norm_ratio,
            "mean_vocab_norm": self.mean_vocab_norm,
            "per_position_baseline": self.per_position_baseline,
            "per_position": self.per_position,
            "counts": {
                "train_prompts": self.n_train_prompts,
                "heldout_prompts": self.n_heldout_prompts,
                "train_tokens": self.n_train_tokens,
                "heldout_slots": self.n_heldout_slots,
                "tokens_beyond_n_positions": self.dropped_tokens,
            },
            "averaging": averaging,
        }
        if self.protocol == "single":
            out["single"] = self.single
        return out


def fit_position_probe(enc, train: Tokenized, site: str, *, min_support: int = 5, **train_kw):
    """Train on every non-padding token of `train` at positions with enough support.
    Returns (probe, train features, dropped token count, train accuracy)."""
    n_pos = supported_positions(train, min_support)
    feats = site_features(enc, train, site)
    keep = feats.position < n_pos
    probe = train_probe(feats.x[keep], feats.position[keep], n_pos, **train_kw)
    train_acc = float((probe.predict(feats.x[keep]) == feats.position[keep]).double().mean())
    return probe, feats, int((~keep).sum()), train_acc


def run_position_probe(
    enc,
    train: Tokenized,
    heldout: Tokenized,
    site: str,
    scales: Sequence[float],
    learned: Optional[dict] = None,
    *,
    probe: Optional[PositionProbe] = None,
    min_support: int = 5,
    norm_mode: str = "multiply",
    protocol: str = "content",
    single_draws: int = SINGLE_DRAWS,
    single_seed: int = 0,
    **train_kw,
) -> tuple[PositionResult, PositionProbe]:
    """Train (unless `probe` is given), then evaluate the baseline, each scale (`norm_mode`, see
    `scaled_replacement`) and each learned embedding ({name: (n_vectors, d) tensor}; each row is
    placed on its own, as it is, in both norm modes, and the accuracies of the rows are averaged).

    `protocol` says where: `content` (every content position of every held-out prompt, one at a
    time) or `single` (`single_token_inputs(enc, single_draws, single_seed)`: one random
    vocabulary token at the first content position of the tokenizer's one-token template)."""
    from geomkit.geometry import norm_stats, row_norms

    check_choice(norm_mode, NORM_MODES, "--norm-mode")
    check_choice(protocol, PROTOCOLS, "--protocol")
    dropped, train_acc = 0, float("nan")
    if probe is None:
        probe, _, dropped, train_acc = fit_position_probe(enc, train, site, min_support=min_support, **train_kw)
    n_pos = probe.n_positions
    single_info: dict = {}
    if protocol == "content":
        evaluated, slots = heldout, content_slots(heldout, n_pos)
    else:
        single = single_token_inputs(enc, single_draws, single_seed)
        if single.position >= n_pos:
            raise GeomkitError(f"--protocol single: the probe knows positions 0..{n_pos - 1}, not {single.position}")
        evaluated, slots = single.tok, single.slots
        single_info = {
            "draws": len(single.token_ids), "seed": int(single_seed), "position": single.position,
            "template": single.template, "candidates": single.candidates, "token_ids": single.token_ids,
            "how": "each input is the tokenizer's one-token template (its special tokens kept) with one vocabulary id "
                   "drawn uniformly with replacement from the rows that are neither special tokens nor all zero; "
                   "the probe is read at that token's position only",
        }
    base = evaluate_replaced(enc, probe, evaluated, site, None, slots=slots)
    hf = site_features(enc, heldout, site)
    keep = hf.position < n_pos
    all_tok = macro_accuracy(probe.predict(hf.x[keep]), hf.position[keep])
    accs, per = [], {}
    from geomkit.report import progress

    for m in progress(scales, desc="probing the scaled tokens", unit="scale"):
        a = evaluate_replaced(enc, probe, evaluated, site, scaled_replacement(enc, m, norm_mode), slots=slots)
        accs.append(a.accuracy)
        per[repr(float(m))] = a.per_position
    mean_norm = norm_stats(row_norms(enc.embedding_table()))["mean"]
    emb, ratio = {}, {}
    for name, vectors in (learned or {}).items():
        vals = [evaluate_replaced(enc, probe, evaluated, site, fixed_replacement(v), slots=slots).accuracy for v in vectors]
        emb[name] = sum(vals) / len(vals)
        ratio[name] = float(vectors.double().norm(dim=-1).mean()) / mean_norm
    result = PositionResult(
        model=enc.name,
        site=site,
        n_positions=n_pos,
        chance=1.0 / n_pos,
        baseline_accuracy=base.accuracy,
        scales=[float(m) for m in scales],
        accuracy=accs,
        embeddings=emb,
        train_accuracy=train_acc,
        baseline_all_tokens=all_tok.accuracy,
        per_position_baseline=base.per_position,
        per_position=per,
        embedding_norm_ratio=ratio,
        n_train_prompts=len(train.ids),
        n_heldout_prompts=len(heldout.ids),
        n_train_tokens=int(sum(min(len(s), n_pos) for s in train.ids)),
        n_heldout_slots=len(slots),
        dropped_tokens=dropped,
        mean_vocab_norm=mean_norm,
        norm_mode=norm_mode,
        protocol=protocol,
        single=single_info,
    )
    return result, probe
