"""Language-model textual inversion: learn a new token of a causal LM from sentences that use it.

Loss: next-token cross-entropy, the learned rows injected at the placeholder's positions.
Scored are the predictions that can depend on the new token: the positions from its first
occurrence on (in a causal model nothing before it sees it, so those terms carry no gradient and
would only dilute the reported loss). Targets that are the placeholder itself (ids beyond the
LM head) and padding are not scored: the model predicts the words around the new token, and
only the token's input embedding is learned.

Whisper tiny.en works the same way on its text decoder (the encoder-decoder model's decoder, given
the encoder states of 30 s of silence, as every geomkit command gives it; its LM head is tied to
the token embedding).

The LM head (262,144 x 640 for Gemma 3) is applied to the scored positions only: the model runs
with `logits_to_keep=1`, the final normalisation's output is captured through the hooking layer,
and the head and cross-entropy are computed here (identical to the model's own loss with the
other labels set to -100; tests check this).
"""

from __future__ import annotations

import torch

from geomkit.errors import GeomkitError
import inspect

import torch.nn.functional as F

from geomkit.hooks import capture, inject
from geomkit.train.data import batch_indices, expand_placeholder


class LMObjective:
    kind = "lm"

    def __init__(self, cfg, inputs: dict, device):
        from geomkit.models import load_encoder
        from geomkit.train.params import private_encoder

        self.cfg = cfg
        self.lines = inputs["lines"]
        self.texts_path = inputs["texts_path"]
        enc = load_encoder(cfg.model, progress=cfg.progress)
        head = enc.model.get_output_embeddings() if hasattr(enc.model, "get_output_embeddings") else None
        if head is None:
            raise GeomkitError(
                f"--objective lm needs a causal language model with an LM head; {cfg.model} is a "
                f"{type(enc.model).__name__} (for a diffusers pipeline folder use --objective diffusion)"
            )
        enc.model.to(device)
        self.enc = private_encoder(enc)
        self.encoders = [self.enc]
        self.device = device
        self.examples: list = []
        self.scored: list = []  # per example: (positions, targets) of the scored predictions
        self.skipped = 0
        self.head = head
        self.softcap = getattr(enc.model.config, "final_logit_softcapping", None)
        if self.enc.site_module("final_norm") is None:
            raise GeomkitError(f"--objective lm: {cfg.model} has no final normalisation site in geomkit's tables")
        if cfg.gradient_checkpointing:
            if not getattr(enc.model, "supports_gradient_checkpointing", False):
                raise GeomkitError(f"--gradient-checkpointing: {type(enc.model).__name__} does not support it")
            if hasattr(enc.model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                enc.model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                enc.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if getattr(enc.model, "_require_grads_hook", None) is not None:  # the learned rows carry the gradient
                enc.model.disable_input_require_grads()
        self.keep_kw = "logits_to_keep" if "logits_to_keep" in inspect.signature(enc.model.forward).parameters else None
        # Whisper: the LM is the text decoder, conditioned on the encoder's silent-audio states;
        # `Encoder.forward` supplies them (cross-attention keys/values computed once per model).
        self.decoder_only_forward = enc.family.name == "whisper-decoder"

    def setup(self, slots) -> None:
        slot = slots[0]
        tok = self.enc.tokenizer
        new = set(slot.token_ids)
        for line in self.lines:
            text = expand_placeholder(line, self.cfg.placeholder, self.cfg.num_vectors)
            ids = tok(text, truncation=True, max_length=self.cfg.max_length)["input_ids"]
            first = next((i for i, t in enumerate(ids) if t in new), None)
            pos = [t for t in range(first, len(ids) - 1) if ids[t + 1] not in new] if first is not None else []
            if pos:
                self.examples.append(list(ids))
                self.scored.append((pos, [ids[t + 1] for t in pos]))
            else:  # the placeholder fell beyond --max-length, or nothing follows it
                self.skipped += 1
        if not self.examples:
            raise GeomkitError(f"--texts {self.texts_path}: no line has words after the placeholder within --max-length "
                               f"{self.cfg.max_length} tokens; raise --max-length or add text after it")
        self.new_ids = torch.tensor(sorted(new))
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def batch(self, step: int, rank: int = 0, world: int = 1):
        """(input_ids, attention_mask, rows, positions, targets) of one step's examples."""
        idx = batch_indices(len(self.examples), self.cfg.batch_size, step, self.cfg.seed, rank, world)
        width = max(len(self.examples[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        rows, pos, tgt = [], [], []
        for r, i in enumerate(idx):
            ex = self.examples[i]
            ids[r, : len(ex)] = torch.tensor(ex)
            mask[r, : len(ex)] = 1
            p, t = self.scored[i]
            rows += [r] * len(p)
            pos += p
            tgt += t
        dev = self.device
        return (ids.to(dev), mask.to(dev), torch.tensor(rows, device=dev), torch.tensor(pos, device=dev),
                torch.tensor(tgt, device=dev))

    def labels(self, ids, rows, pos, tgt):
        """The same targets as HF `labels` (-100 elsewhere), for checking against the model's own loss."""
        labels = torch.full_like(ids, -100)
        labels[rows, pos + 1] = tgt
        return labels

    def micro_batches(self, step: int, rank: int, world: int, size: int) -> list:
        """[(micro-batch, weight)]: the step's batch cut into chunks of `size` sentences (same
        padded width), each weighted by its share of the batch's scored predictions, so the
        weighted chunk means sum to the batch's mean cross-entropy."""
        ids, mask, rows, pos, tgt = self.batch(step, rank, world)
        r = rows.cpu()
        out = []
        for lo in range(0, ids.shape[0], size):
            sel = ((r >= lo) & (r < lo + size)).nonzero().squeeze(1).to(rows.device)
            out.append(((ids[lo: lo + size], mask[lo: lo + size], rows[sel] - lo, pos[sel], tgt[sel]), len(sel) / len(r)))
        return out

    def step_mode(self):
        """--gradient-checkpointing: transformers checkpoints only in train mode; the model is put
        in train mode for the step (dropout modules kept in eval), then back in eval mode."""
        from contextlib import contextmanager, nullcontext

        if not self.cfg.gradient_checkpointing:
            return nullcontext()

        @contextmanager
        def train_mode(model):
            model.train()
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.eval()
            try:
                yield
            finally:
                model.eval()

        return train_mode(self.enc.model)

    def loss(self, vectors, slots, step: int, rank: int = 0, world: int = 1, part=None):
        ids, mask, rows, pos, tgt = self.batch(step, rank, world) if part is None else part
        kwargs = {self.keep_kw: 1} if self.keep_kw else {}
        with inject(self.enc, vectors[0], token_ids=slots[0].token_ids), \
                capture(self.enc, ["final_norm"], detach=False) as cache:
            if self.decoder_only_forward:
                self.enc.forward(ids, mask)
            else:
                self.enc.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
        hidden = cache["final_norm"][rows, pos]
        logits = F.linear(hidden, self.head.weight, self.head.bias)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits.float(), tgt)

    def validate(self, slots, step, out_dir):
        return []

    def describe(self) -> dict:
        return {"texts": str(self.texts_path), "sentences": len(self.examples), "skipped_truncated": self.skipped}
