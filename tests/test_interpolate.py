"""slerp / lerp between learned tokens (Fig. 4): the geometry, `geomkit interpolate` end to end
(files, results.json, the rendered grid on tiny SD / SDXL pipelines) and its one-line errors."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_one_line_error as _assert_one_line_error, run_cli as _run
from geomkit.embeddings_io import read_tensors, save_learned, save_sdxl_pair
from geomkit.geometry import nearest
from geomkit.interpolation import FIG4_RATIOS, describe, interpolate

FIG4 = list(FIG4_RATIOS)






def _on_sphere(d, m, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, d, generator=g)
    return v / v.norm() * m


def test_slerp_property_norm_linear_in_t_and_angle_proportional_to_t():
    """geometry.slerp's documented contract, on random float64 vectors of random norms and many t:
    |slerp(a, b, t)| = (1 - t)|a| + t|b| (so equal norms stay equal: by construction, not a finding)
    and the direction's angle to a is t * angle(a, b), on the arc to b."""
    from geomkit.geometry import angle_deg, slerp

    g = torch.Generator().manual_seed(18)
    ts = torch.linspace(0, 1, 41, dtype=torch.float64).tolist() + torch.rand(40, generator=g, dtype=torch.float64).tolist()
    for trial in range(50):
        d = [2, 3, 16, 640][trial % 4]
        a = torch.randn(d, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g) * 5 + 0.01)
        b = torch.randn(d, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g) * 5 + 0.01)
        na, nb = float(a.norm()), float(b.norm())
        omega = float(angle_deg(a, b))
        for t in ts:
            v = slerp(a, b, t)
            assert v.dtype == torch.float64
            assert float(v.norm()) == pytest.approx((1 - t) * na + t * nb, abs=1e-12, rel=1e-12)
            assert float(angle_deg(a, v)) == pytest.approx(t * omega, abs=1e-9)
            assert float(angle_deg(v, b)) == pytest.approx((1 - t) * omega, abs=1e-9)
    # rows are independent: a batch gives each row's own result
    a, b = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    batch = slerp(a, b, 0.3)
    for i in range(5):
        torch.testing.assert_close(batch[i], slerp(a[i], b[i], 0.3), rtol=0, atol=1e-14)


def test_slerp_of_equal_norms_hits_both_endpoints_exactly_and_keeps_the_norm_by_construction():
    a, b = _on_sphere(64, 0.387, 0), _on_sphere(64, 0.387, 1)
    mixes = interpolate({"embedding": a}, {"embedding": b}, FIG4, "slerp")
    assert torch.equal(mixes[0]["embedding"], a) and torch.equal(mixes[-1]["embedding"], b)
    for m in mixes:
        assert m["embedding"].double().norm().item() == pytest.approx(0.387, rel=1e-6)
    # the direction moves at constant angular speed along the great circle
    info = describe({"embedding": a}, {"embedding": b}, mixes)
    omega = info["angle_ab_deg"][0]
    for t, ang, to_b in zip(FIG4, info["angles_deg"], info["angles_to_b_deg"]):
        assert ang[0] == pytest.approx(t * omega, abs=1e-4)
        assert to_b[0] == pytest.approx((1 - t) * omega, abs=1e-4)
        assert ang[0] + to_b[0] == pytest.approx(omega, abs=1e-4)  # on the arc between A and B


def test_slerp_norm_is_linear_when_the_inputs_differ_and_per_part_for_sdxl():
    a = {"clip_l": _on_sphere(8, 0.4, 0), "clip_g": _on_sphere(12, 0.6, 1)}
    b = {"clip_l": _on_sphere(8, 2.0, 2), "clip_g": _on_sphere(12, 0.6, 3)}
    mixes = interpolate(a, b, [0.0, 0.25, 0.5, 1.0], "slerp")
    for t, m in zip([0.0, 0.25, 0.5, 1.0], mixes):
        assert m["clip_l"].norm().item() == pytest.approx((1 - t) * 0.4 + t * 2.0, rel=1e-6)
        assert m["clip_g"].norm().item() == pytest.approx(0.6, rel=1e-6)


def test_lerp_midpoint_norm_is_smaller_when_the_inputs_differ():
    a, b = _on_sphere(64, 0.387, 0), _on_sphere(64, 0.387, 1)
    mixes = interpolate({"embedding": a}, {"embedding": b}, [0.0, 0.5, 1.0], "lerp")
    mid = mixes[1]["embedding"]
    assert torch.equal(mixes[0]["embedding"], a) and torch.equal(mixes[2]["embedding"], b)
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double()).item()
    expect = 0.387 * math.sqrt((1 + cos) / 2)  # |(a + b) / 2| for |a| = |b|
    assert mid.double().norm().item() == pytest.approx(expect, rel=1e-6)
    assert mid.norm() < 0.387 * 0.99
    # identical inputs: lerp changes nothing
    same = interpolate({"embedding": a}, {"embedding": a.clone()}, [0.5], "lerp")[0]["embedding"]
    torch.testing.assert_close(same, a)


def test_cli_writes_one_file_per_ratio_and_results(tmp_path, capsys):
    a, b = _on_sphere(32, 0.5, 0), _on_sphere(32, 0.5, 1)
    save_learned(tmp_path / "a.safetensors", "<cat-a>", a)
    save_learned(tmp_path / "b.safetensors", "<dog-b>", b)
    out = tmp_path / "o"
    code, stdout, _ = _run(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--out", out)
    assert code == 0 and "slerp" in stdout
    res = json.loads((out / "results.json").read_text())
    assert {"mode", "ratios", "norms", "angles_deg"} <= set(res)
    assert res["mode"] == "slerp" and res["ratios"] == FIG4 and res["parts"] == ["embedding"]
    assert len(res["files"]) == len(FIG4) == len(res["norms"]) == len(res["angles_deg"])
    expect = interpolate({"embedding": a}, {"embedding": b}, FIG4, "slerp")
    for f, e, n in zip(res["files"], expect, res["norms"]):
        saved = read_tensors(out / f)
        assert list(saved) == ["<mix>"]  # diffusers format, loadable by load_textual_inversion
        torch.testing.assert_close(saved["<mix>"], e["embedding"], rtol=0, atol=0)
        assert n[0] == pytest.approx(0.5, rel=1e-6)
    assert res["angles_deg"][0][0] == pytest.approx(0.0, abs=1e-9)
    assert res["angles_deg"][-1][0] == pytest.approx(res["angle_ab_deg"][0], abs=1e-9)

    code, _, _ = _run(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors",
                      "--mode", "lerp", "--ratios", "0.5", "--out", tmp_path / "l")
    lres = json.loads((tmp_path / "l" / "results.json").read_text())
    assert code == 0 and lres["mode"] == "lerp" and lres["norms"][0][0] < 0.5 * 0.99


def test_rendered_grid_on_tiny_sd_matches_generate_at_the_endpoints(tiny_dir, tmp_path, capsys):
    """Ratio 0 renders exactly what A renders on its own (`geomkit generate`, same seed)."""
    sd = tiny_dir("sd")
    a, b = _on_sphere(32, 0.5, 0), _on_sphere(32, 0.5, 1)
    save_learned(tmp_path / "a.safetensors", "<a-tok>", a)
    save_learned(tmp_path / "b.safetensors", "<b-tok>", b)
    gen = ["--steps", "2", "--size", "32", "--seeds", "3", "--no-progress"]
    code, _, _ = _run(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--ratios", "0,0.5,1",
                      "--model", sd, "--prompt", "a photo of {}", "--batch-size", "3", "--out", tmp_path / "i", *gen)
    assert code == 0
    res = json.loads((tmp_path / "i" / "results.json").read_text())
    grid = Image.open(tmp_path / "i" / res["grid"])
    assert grid.size[0] > 3 * 32 and grid.size[1] >= 32
    imgs = sorted((tmp_path / "i" / "images").glob("*.png"))
    assert len(imgs) == 3
    code, _, _ = _run(capsys, "generate", "--model", sd, "--embedding", tmp_path / "a.safetensors", "--prompt", "a photo of {}",
                      "--out", tmp_path / "g", *gen)
    assert code == 0
    single = sorted((tmp_path / "g" / "images").glob("*.png"))
    r0 = np.asarray(Image.open(imgs[0])).astype(int)
    ga = np.asarray(Image.open(single[0])).astype(int)
    r1 = np.asarray(Image.open(imgs[1])).astype(int)
    assert np.abs(r0 - ga).max() <= 1  # same vector, same seed: the same picture
    assert np.abs(r0 - r1).max() > 0  # the midpoint is another picture


def test_sdxl_pairs_interpolate_per_encoder_and_render(tiny_dir, tmp_path, capsys):
    save_sdxl_pair(tmp_path / "a.safetensors", _on_sphere(32, 0.4, 0), _on_sphere(48, 0.6, 1))
    save_sdxl_pair(tmp_path / "b.safetensors", _on_sphere(32, 0.4, 2), _on_sphere(48, 0.6, 3))
    code, _, err = _run(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--ratios", "0,0.5,1",
                        "--model", tiny_dir("sdxl"), "--prompt", "{} on a beach", "--prompt", "a {}", "--steps", "2",
                        "--size", "32", "--no-progress", "--out", tmp_path / "o")
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["parts"] == ["clip_l", "clip_g"] and res["format"] == "sdxl clip_l/clip_g"
    for n in res["norms"]:
        assert n == pytest.approx([0.4, 0.6], rel=1e-6)
    mid = read_tensors(tmp_path / "o" / res["files"][1])
    assert set(mid) == {"clip_l", "clip_g"} and mid["clip_g"].shape == (1, 48)
    assert len(list((tmp_path / "o" / "images").glob("*.png"))) == 6


def test_bad_inputs_give_one_line(tiny_dir, tmp_path, capsys):
    save_learned(tmp_path / "a.safetensors", "<a>", _on_sphere(32, 0.5, 0))
    save_learned(tmp_path / "wide.safetensors", "<w>", _on_sphere(64, 0.5, 1))
    save_sdxl_pair(tmp_path / "pair.safetensors", _on_sphere(32, 0.4, 0), _on_sphere(48, 0.6, 1))
    a, w, pair = (str(tmp_path / f) for f in ("a.safetensors", "wide.safetensors", "pair.safetensors"))
    out = tmp_path / "never"
    _assert_one_line_error(*_run(capsys, "interpolate", a, w, "--out", out)[::2], "different text encoders")
    _assert_one_line_error(*_run(capsys, "interpolate", a, pair, "--out", out)[::2], "SDXL clip_l/clip_g pair")
    _assert_one_line_error(*_run(capsys, "interpolate", a, a, "--ratios", "0,1.5", "--out", out)[::2], "outside [0, 1]")
    _assert_one_line_error(*_run(capsys, "interpolate", a, tmp_path / "nope.safetensors", "--out", out)[::2], "no such")
    _assert_one_line_error(*_run(capsys, "interpolate", a, a, "--prompt", "x {}", "--out", out)[::2], "needs --model")
    _assert_one_line_error(*_run(capsys, "interpolate", a, a, "--model", tiny_dir("sd"), "--prompt", "no slot", "--out", out)[::2], "placeholder")
    # an SD-sized token cannot be rendered by an SDXL pipeline: refused before anything loads
    _assert_one_line_error(*_run(capsys, "interpolate", a, a, "--model", tiny_dir("sdxl"), "--prompt", "{}", "--out", out)[::2],
                           "both text encoders")
    assert not out.exists()


def _run_folder(folder, model, vec, placeholder):
    """A training run folder in the trainer's format (SD 1.x: one diffusers file)."""
    folder.mkdir(parents=True)
    save_learned(folder / "learned_embeds.safetensors", placeholder, vec)
    results = {"method": "dti", "objective": "diffusion", "model": str(model), "placeholder": placeholder,
               "init_word": "dog", "m_star": [0.5], "kappa": 1e-4, "lr": 5e-3, "steps": 2, "batch_size": 1,
               "final_loss": 0.1, "final_norm": [0.5], "angle_from_init_deg": 1.0, "cos_to_prior": 0.99,
               "seconds": 1.0, "drift": {}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_run_folders_as_inputs_render_with_their_pipeline(tiny_dir, tmp_path, capsys):
    a = _run_folder(tmp_path / "ra", tiny_dir("sd"), _on_sphere(32, 0.5, 0), "<dog-a>")
    b = _run_folder(tmp_path / "rb", tiny_dir("sd"), _on_sphere(32, 0.5, 1), "<dog-b>")
    code, _, err = _run(capsys, "interpolate", a, b, "--ratios", "0,0.5,1", "--prompt", "a {}", "--steps", "2", "--size", "32",
                        "--no-progress", "--out", tmp_path / "o")
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["a"]["token"] == "<dog-a>" and res["model"] == str(tiny_dir("sd")) and res["grid"]
    other = _run_folder(tmp_path / "rc", tiny_dir("sdxl"), _on_sphere(32, 0.5, 2), "<dog-c>")
    _assert_one_line_error(*_run(capsys, "interpolate", a, other, "--out", tmp_path / "never")[::2], "different encoders")


# ---- --neighbors: what can fail along the path ---------------------------------------------------
def _tokens_on(enc, tmp_path, seed=0):
    """Two learned tokens of the encoder's width, 0.3 * N(0, 1), and their files."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(1, enc.d_model, generator=g) * 0.3, torch.randn(1, enc.d_model, generator=g) * 0.3
    save_learned(tmp_path / "a.safetensors", "<nb-a>", a)
    save_learned(tmp_path / "b.safetensors", "<nb-b>", b)
    return a, b, str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")


def test_neighbors_at_the_ends_are_geomkit_neighbors_of_a_and_b(tiny_dir, tiny_encoder, tmp_path, capsys):
    clip = tiny_dir("clip")
    enc = tiny_encoder("clip")
    a, b, fa, fb = _tokens_on(enc, tmp_path)
    ratios = [0, 0.25, 0.5, 0.75, 1]
    code, stdout, err = _run(capsys, "interpolate", fa, fb, "--ratios", "0,0.25,0.5,0.75,1", "--neighbors", 7, "--model", clip,
                             "--out", tmp_path / "i")
    assert code == 0, err
    res = json.loads((tmp_path / "i" / "results.json").read_text())
    assert res["top_k"] == 7 and len(res["neighbors"]) == len(ratios)
    assert all(len(n["embedding"]) == 7 for n in res["neighbors"])
    for f, i in ((fa, 0), (fb, -1)):
        code, _, err = _run(capsys, "neighbors", "--embedding", f, "--model", clip, "-k", 7, "--out", tmp_path / f"n{i}")
        assert code == 0, err
        ref = next(iter(json.loads((tmp_path / f"n{i}" / "results.json").read_text())["queries"].values()))["cosine"]
        got = res["neighbors"][i]["embedding"]
        assert [r["token"] for r in got] == [r["token"] for r in ref]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in ref], abs=1e-6)
        assert [r["text"] for r in got] == [enc.token_text(r["id"]) for r in got]  # decoded, as neighbors.csv shows
    # norm / m*, m* = the mean of the vocabulary's non-zero row norms
    norms = enc.embedding_table().double().norm(dim=1)
    m_star = float(norms[norms > 0].mean())
    assert res["m_star"] == [pytest.approx(m_star, rel=1e-9)]
    for n, r in zip(res["norms"], res["norm_over_m_star"]):
        assert r[0] == pytest.approx(n[0] / m_star, rel=1e-9)
    # the smoothness dict is what the neighbour lists say
    sm = res["smoothness"]["embedding"]
    ids = [[r["id"] for r in n["embedding"]] for n in res["neighbors"]]
    assert sm["jaccard"] == pytest.approx([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(ids, ids[1:])])
    assert sm["top1_ids"] == [x[0] for x in ids] and sm["distinct_top1"] == len({x[0] for x in ids})
    assert sm["top1_changes"] == sum(x[0] != y[0] for x, y in zip(ids, ids[1:]))
    assert sm["angle_to_a_monotonic"] is True  # slerp: t * angle(A, B)
    # the CSVs hold the same numbers
    import pandas as pd

    nb = pd.read_csv(tmp_path / "i" / "neighbors.csv", keep_default_na=False)
    assert len(nb) == 7 * len(ratios) and list(nb[nb.ratio == 0.5].id) == ids[2]
    path = pd.read_csv(tmp_path / "i" / "path.csv", keep_default_na=False)
    assert list(path.norm_over_m_star) == pytest.approx([r[0] for r in res["norm_over_m_star"]])
    assert "smoothness (embedding, top-7)" in stdout and "norm/m*" in stdout


def test_neighbors_jaccard_is_one_when_the_direction_does_not_change(tiny_dir, tiny_encoder, tmp_path, capsys):
    """B = 2 A: every interpolant points the same way, so the neighbour sets cannot change."""
    enc = tiny_encoder("clip")
    a = torch.randn(1, enc.d_model, generator=torch.Generator().manual_seed(3)) * 0.3
    save_learned(tmp_path / "a.safetensors", "<nb-a>", a)
    save_learned(tmp_path / "b.safetensors", "<nb-b>", 2 * a)
    for mode in ("slerp", "lerp"):
        code, _, err = _run(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--mode", mode,
                            "--ratios", "0,0.3,0.6,1", "--neighbors", 5, "--model", tiny_dir("clip"), "--out", tmp_path / mode)
        assert code == 0, err
        sm = json.loads((tmp_path / mode / "results.json").read_text())["smoothness"]["embedding"]
        assert sm["jaccard"] == [1.0, 1.0, 1.0] and sm["top1_changes"] == 0 and sm["distinct_top1"] == 1
        assert sm["angle_to_a_monotonic"] is True


def test_smoothness_on_a_hand_made_path():
    from geomkit.interpolation import jaccard, smoothness

    assert jaccard([1, 2, 3], [3, 2, 1]) == 1.0 and jaccard([1, 2], [3, 4]) == 0.0 and jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    # given out of order: measured in ascending ratio order
    ratios = [1.0, 0.0, 0.5, 0.25]
    ids = [[9, 8, 7], [1, 2, 3], [4, 2, 3], [1, 3, 4]]
    angles = [40.0, 0.0, 15.0, 20.0]  # 0 -> 20 -> 15 -> 40: turns back towards A between 0.25 and 0.5
    sm = smoothness(ratios, ids, angles, labels=["nine", "one", "four", "one"])
    assert sm["ratios"] == [0.0, 0.25, 0.5, 1.0]
    assert sm["jaccard"] == pytest.approx([2 / 4, 2 / 4, 0.0])  # {1,2,3}&{1,3,4}; {1,3,4}&{4,2,3}; {4,2,3}&{9,8,7}
    assert sm["jaccard_min"] == 0.0 and sm["jaccard_mean"] == pytest.approx(1 / 3)
    assert sm["top1_changed"] == [False, True, True] and sm["top1_changes"] == 2
    assert sm["top1_ids"] == [1, 1, 4, 9] and sm["distinct_top1"] == 3
    assert sm["top1"] == ["one", "one", "four", "nine"] and sm["top1_sequence"] == ["one", "four", "nine"]
    assert sm["angle_to_a_steps_deg"] == pytest.approx([20.0, -5.0, 25.0]) and sm["angle_to_a_monotonic"] is False
    # a top-1 that comes back is one distinct token, two changes
    back = smoothness([0, 0.5, 1], [[1], [2], [1]], [0, 1, 2])
    assert back["distinct_top1"] == 2 and back["top1_changes"] == 2 and back["angle_to_a_monotonic"] is True


def test_neighbors_default_to_the_runs_model(tiny_dir, tiny_encoder, tmp_path, capsys):
    enc = tiny_encoder("sd")
    ra = _run_folder(tmp_path / "ra", tiny_dir("sd"), _on_sphere(enc.d_model, 0.5, 0), "<dog-a>")
    rb = _run_folder(tmp_path / "rb", tiny_dir("sd"), _on_sphere(enc.d_model, 0.5, 1), "<dog-b>")
    code, _, err = _run(capsys, "interpolate", ra, rb, "--ratios", "0,0.5,1", "--neighbors", 3, "--out", tmp_path / "o")
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["vocabulary_model"] and len(res["neighbors"]) == 3 and res["grid"] is None
    # both runs are DTI tokens at the same norm: norm/m* is that norm over m*, the same at every ratio (by construction)
    ratio = res["norm_over_m_star"][0][0]
    assert ratio == pytest.approx(0.5 / res["m_star"][0], rel=1e-6)
    assert [r[0] for r in res["norm_over_m_star"]] == pytest.approx([ratio] * 3, rel=1e-6)


def test_neighbors_bad_inputs_give_one_line(tiny_dir, tmp_path, capsys):
    _, _, fa, fb = _tokens_on(type("E", (), {"d_model": 32})(), tmp_path)
    clip = str(tiny_dir("clip"))
    out = tmp_path / "never"
    run = lambda *argv: _run(capsys, "interpolate", fa, fb, *argv, "--out", out)[::2]  # noqa: E731
    _assert_one_line_error(*run("--neighbors", "0", "--model", clip), "at least 1")
    _assert_one_line_error(*run("--neighbors", "ten", "--model", clip), "not an integer")
    _assert_one_line_error(*run("--neighbors", "5"), "needs --model")  # files, not run folders: no model to fall back on
    _assert_one_line_error(*run("--neighbors", "5", "--model", str(tmp_path / "no-such-model")), "no-such-model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    _assert_one_line_error(*run("--neighbors", "5", "--model", str(broken)), "not valid JSON")
    _assert_one_line_error(*run("--neighbors", "100000", "--model", clip), "has only")
    assert not out.exists()
    save_learned(tmp_path / "w1.safetensors", "<w1>", _on_sphere(48, 0.5, 0))
    save_learned(tmp_path / "w2.safetensors", "<w2>", _on_sphere(48, 0.5, 1))
    _assert_one_line_error(*_run(capsys, "interpolate", tmp_path / "w1.safetensors", tmp_path / "w2.safetensors", "--neighbors", 5,
                                 "--model", clip, "--out", out)[::2], "dimension 32")
    assert not out.exists()


def test_neighbors_of_sdxl_pairs_use_each_parts_own_encoder(tiny_dir, tiny_encoder, tmp_path, capsys):
    """clip_l is compared with text encoder 1's vocabulary and clip_g with encoder 2's, each with its own m*."""
    sdxl = tiny_dir("sdxl")
    e1, e2 = tiny_encoder("sdxl", 1), tiny_encoder("sdxl", 2)
    save_sdxl_pair(tmp_path / "a.safetensors", _on_sphere(e1.d_model, 0.4, 0), _on_sphere(e2.d_model, 0.6, 1))
    save_sdxl_pair(tmp_path / "b.safetensors", _on_sphere(e1.d_model, 0.4, 2), _on_sphere(e2.d_model, 0.6, 3))
    code, _, err = _run(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--ratios", "0,0.5,1",
                        "--neighbors", 4, "--model", sdxl, "--out", tmp_path / "o")
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(res["smoothness"]) == {"clip_l", "clip_g"}
    for part, enc, norm in (("clip_l", e1, 0.4), ("clip_g", e2, 0.6)):
        n = enc.embedding_table().double().norm(dim=1)
        m_star = float(n[n > 0].mean())
        j = res["parts"].index(part)
        assert res["m_star"][j] == pytest.approx(m_star, rel=1e-9)
        assert res["norm_over_m_star"][1][j] == pytest.approx(norm / m_star, rel=1e-6)
        end = read_tensors(tmp_path / "a.safetensors")[part]
        cos, _ = nearest(enc.embedding_table(), end, k=4)
        assert [r["id"] for r in res["neighbors"][0][part]] == cos[0].ids.tolist()
