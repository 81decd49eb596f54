"""Whisper tiny.en forwards vs MiniLM-L6 on the same command, as a ratio measured in one run.

`geomkit residual-angles` runs in this process on whisper-tiny-en and on minilm-l6 with the same
arguments, the runs interleaved (minilm, whisper, minilm, whisper, ...) after one warm-up run of
each (which loads the model), so machine load hits both alike. Goal: whisper / minilm <= 1.5
(issue 10; before the cross-attention keys/values of the silent audio were computed once per
model, the ratio was 2.8-4x). Also times one forward of a batch both ways (fast path vs the
uncached reference) on Whisper.

    python benchmarks/bench_whisper.py [--repeats 3] [--max-prompts 16] [--out runs/bench-whisper]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-prompts", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from geomkit.cli import main as cli_main
    from geomkit.models import load_encoder

    cmd = ["residual-angles", "--scales", "0.5,1,2,4,8,16", "--words", "apple,dog,house,tree,car,cat",
           "--max-prompts", str(args.max_prompts)]
    tmp = tempfile.mkdtemp(prefix="bench-whisper-")
    times = {"minilm-l6": [], "whisper-tiny-en": []}

    def once(model, k):
        t = time.perf_counter()
        code = cli_main([*cmd, "--model", model, "--out", os.path.join(tmp, f"{model}-{k}")])
        assert code == 0
        return time.perf_counter() - t

    for model in times:  # warm-up: loads the model, computes Whisper's audio context once
        once(model, "warm")
    load0 = os.getloadavg()[0]
    for k in range(args.repeats):
        for model in times:
            times[model].append(once(model, k))
    load1 = os.getloadavg()[0]

    enc = load_encoder("whisper-tiny-en")
    batch = enc.encode(["a photo of a dog wearing a red santa hat in the snow"] * 8)
    cfg = enc.model.config
    fast, slow = [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            t = time.perf_counter()
            enc.forward(batch["input_ids"], batch["attention_mask"])
            fast.append(time.perf_counter() - t)
            t = time.perf_counter()
            mel = torch.zeros(1, cfg.num_mel_bins, 2 * cfg.max_source_positions)
            states = enc.model.model.encoder(mel).last_hidden_state.repeat(8, 1, 1)
            enc.root(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     encoder_hidden_states=states, use_cache=False)
            slow.append(time.perf_counter() - t)
    med = {m: statistics.median(v) for m, v in times.items()}
    result = {
        "command": "geomkit " + " ".join(cmd),
        "seconds_median": med,
        "seconds": times,
        "ratio_whisper_over_minilm": med["whisper-tiny-en"] / med["minilm-l6"],
        "goal": "<= 1.5",
        "forward_batch8_fast_s": statistics.median(fast),
        "forward_batch8_uncached_with_encoder_s": statistics.median(slow),
        "load_average_1min": [load0, load1],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_whisper.json"), "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
