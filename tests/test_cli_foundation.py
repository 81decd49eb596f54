"""`geomkit neighbors` and `geomkit norms` end to end, and their one-line errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import assert_one_line_error as _assert_one_line_error, run_cli as _run






def test_neighbors_results_json_matches_brute_force(tiny_dir, tmp_path, capsys):
    model = str(tiny_dir("clip"))
    code, out, _ = _run(capsys, "neighbors", "apple", "dog", "--model", model, "--out", str(tmp_path), "-k", "5")
    assert code == 0 and "apple" in out
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"model", "queries"} and set(res["queries"]) == {"apple", "dog"}
    from geomkit.models import load_encoder

    enc = load_encoder(model)
    table = enc.embedding_table().double()
    q = table[enc.token_id("apple")]
    cos = torch.nn.functional.cosine_similarity(table, q[None], dim=1)
    cos[enc.token_id("apple")] = -2
    expect = [enc.token_str(i) for i in cos.topk(5).indices]
    got = res["queries"]["apple"]
    assert [e["token"] for e in got["cosine"]] == expect
    assert got["cosine"][0]["score"] == pytest.approx(cos.max().item(), abs=1e-5)
    assert all(set(e) == {"token", "score"} for e in got["euclidean"])
    assert (tmp_path / "neighbors.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_norms_results_and_embedding_ratio(tiny_dir, tmp_path, capsys):
    model = str(tiny_dir("clip"))
    from geomkit.models import load_encoder

    enc = load_encoder(model)
    big = enc.embedding_table()[enc.token_id("dog")] * 50
    save_file({"<big-dog>": big[None].contiguous()}, str(tmp_path / "big.safetensors"))
    code, out, _ = _run(capsys, "norms", "--model", model, "--out", str(tmp_path / "o"), "--embedding", str(tmp_path / "big.safetensors"))
    assert code == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    norms = enc.embedding_table().double().norm(dim=1)
    assert res["count"] == int((norms > 0).sum())
    assert res["mean"] == pytest.approx(norms[norms > 0].mean().item(), rel=1e-9)
    for key in ("median", "std", "min", "max"):
        assert key in res
    e = res["embeddings"]["<big-dog>"]
    assert e["norm"] == pytest.approx(big.norm().item(), rel=1e-5)
    assert e["ratio_to_mean"] == pytest.approx(e["norm"] / res["mean"], rel=1e-9)
    assert (tmp_path / "o" / "norm_histogram.png").stat().st_size > 1000


def test_bad_inputs_give_one_line(tiny_dir, tmp_path, capsys):
    model = str(tiny_dir("clip"))
    out = str(tmp_path / "o")
    _assert_one_line_error(*_run(capsys, "neighbors", "apple", "--model", "nonesuch", "--out", out)[::2], "unknown model")
    _assert_one_line_error(*_run(capsys, "neighbors", "apple", "--model", str(tmp_path / "nope"), "--out", out)[::2], "folder not found")
    _assert_one_line_error(*_run(capsys, "neighbors", "photosynthesizingly", "--model", model, "--out", out)[::2], "splits into")
    save_file({"a": torch.ones(1, 7)}, str(tmp_path / "wrongdim.safetensors"))
    _assert_one_line_error(
        *_run(capsys, "neighbors", "--embedding", str(tmp_path / "wrongdim.safetensors"), "--model", model, "--out", out)[::2],
        "does not match",
    )
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(tmp_path / "two.safetensors"))
    _assert_one_line_error(*_run(capsys, "norms", "--embedding", str(tmp_path / "two.safetensors"), "--model", model, "--out", out)[::2], "holds 2 tensors")
    (tmp_path / "x.pt").write_bytes(b"\x80\x04")
    _assert_one_line_error(*_run(capsys, "norms", "--embedding", str(tmp_path / "x.pt"), "--model", model, "--out", out)[::2], "pickle")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _assert_one_line_error(*_run(capsys, "norms", "--model", model, "--out", str(blocker / "sub"))[::2], "not a writable folder")


def test_written_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from geomkit.report import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "results.json").st_mode) == 0o644
