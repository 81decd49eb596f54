"""Foundation benchmarks, as ratios measured in one run (these machines are noisy).

1. Capturing every block's input and output vs a plain forward of the same batch (goal <= 1.10).
2. gemma3-270m: load from the safetensors cache vs the first GGUF conversion (goal <= 10 s cached).
3. One neighbour query vs the model load, on gemma3-270m.

    python benchmarks/bench_foundation.py [--skip-conversion]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROMPTS = [
    "a photo of a dog wearing a red santa hat in the snow",
    "an oil painting of a lighthouse on a cliff at sunset, dramatic clouds",
    "a teapot shaped like a cat sitting on a wooden table",
    "a watercolor of a fox in a pine forest at night under the stars",
] * 2


def _subprocess_seconds(code: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_capture(enc, repeats: int = 7) -> dict:
    import torch

    from geomkit.hooks import capture

    batch = enc.encode(PROMPTS)
    sites = [f"blocks.{i}.{w}" for i in range(enc.n_blocks) for w in ("resid_pre", "resid_post")]
    plain, hooked = [], []
    with torch.no_grad():
        enc.forward(batch["input_ids"], batch["attention_mask"])  # warm-up
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            t = time.perf_counter()
            enc.forward(batch["input_ids"], batch["attention_mask"])
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            with capture(enc, sites):
                enc.forward(batch["input_ids"], batch["attention_mask"])
            hooked.append(time.perf_counter() - t)
    p, h = statistics.median(plain), statistics.median(hooked)
    return {"model": enc.name, "sites": len(sites), "plain_s": p, "capture_s": h, "ratio": h / p}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-conversion", action="store_true", help="do not time a fresh GGUF conversion (about 1-2 min)")
    args = ap.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    load_code = "from geomkit.models import load_encoder; load_encoder('gemma3-270m', progress=False)"
    _subprocess_seconds(load_code, env)  # make sure the user cache exists
    import_s = _subprocess_seconds("import torch, transformers, geomkit.models", env)
    cached_s = _subprocess_seconds(load_code, env)
    print(f"[load] gemma3-270m from cache: {cached_s:.1f} s in a fresh process ({import_s:.1f} s of it importing torch/transformers); goal <= 10 s")
    if not args.skip_conversion:
        with tempfile.TemporaryDirectory() as tmp:
            convert_s = _subprocess_seconds(load_code, dict(env, GEOMKIT_CACHE=tmp))
        print(f"[load] gemma3-270m first conversion (GGUF de-quantise + cache): {convert_s:.1f} s; cached/first = {cached_s / convert_s:.3f}")

    from geomkit.models import load_encoder

    t = time.perf_counter()
    enc = load_encoder("gemma3-270m", progress=False)
    load_s = time.perf_counter() - t
    from geomkit.geometry import nearest

    table = enc.embedding_table()
    q = table[enc.token_id("apple")]
    nearest(table, q, k=10, exclude=[[enc.token_id("apple")]])  # warm-up
    t = time.perf_counter()
    nearest(table, q, k=10, exclude=[[enc.token_id("apple")]])
    query_s = time.perf_counter() - t
    print(f"[neighbours] one query over {table.shape[0]} x {table.shape[1]}: {query_s:.3f} s vs load {load_s:.2f} s in-process (ratio {query_s / load_s:.3f})")

    for spec in ("gemma3-270m", "minilm-l6"):
        r = bench_capture(load_encoder(spec, progress=False))
        print(
            f"[capture] {r['model']}: {r['sites']} sites, plain {r['plain_s'] * 1e3:.1f} ms, with capture {r['capture_s'] * 1e3:.1f} ms, "
            f"ratio {r['ratio']:.3f} (goal <= 1.10)"
        )


if __name__ == "__main__":
    main()
