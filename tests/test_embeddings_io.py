"""Learned-embedding files as people share them: A1111 .pt, diffusers .bin (1-D and 2-D), SDXL
pairs in either container, read only through the restricted unpickler; bad files refused in one
line (a malicious pickle's command provably not run); `geomkit convert` round-trips and its
outputs load in diffusers."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from geomkit.embeddings_io import load_learned, read_embedding
from geomkit.errors import GeomkitError
from helpers import assert_one_line_error, run_cli

D = 32  # the tiny CLIP's width (the tiny SDXL: 32 and 48)


def a1111_pt(path, vec, name="my-style", **extra):
    """What A1111's Embedding.save writes: the vector as a Parameter with requires_grad."""
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vec.clone())},
        "name": name,
        "step": 1500,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
        **extra,
    }
    if name is None:
        del data["name"]
    torch.save(data, str(path))
    return path


class Evil:
    """A pickle whose loading would run a shell command (creating a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a1111_pt(tmp_path):
    vec = torch.randn(3, D)
    ef = read_embedding(a1111_pt(tmp_path / "style.pt", vec))
    assert ef.name == "my-style" and ef.layout == "a1111" and ef.container == "pickle"
    (part,) = ef.parts.values()
    assert torch.equal(part, vec) and part.dtype == torch.float32 and not part.requires_grad
    assert ef.meta["step"] == 1500 and ef.meta["sd_checkpoint_name"] == "v1-5-pruned-emaonly"
    # no name inside: the file's stem, as A1111 itself uses
    assert read_embedding(a1111_pt(tmp_path / "stem-name.pt", vec, name=None)).name == "stem-name"
    # half precision and a renamed suffix (.bin) are read the same way
    a1111_pt(tmp_path / "half.bin", vec.half())
    assert torch.equal(read_embedding(tmp_path / "half.bin").parts["half.bin"], vec.half().float())


def test_diffusers_bin_1d_and_2d(tmp_path):
    v1, v2 = torch.randn(D), torch.randn(4, D)
    torch.save({"<cat-toy>": v1}, tmp_path / "learned_embeds.bin")
    torch.save({"<cat-toy>": v2}, tmp_path / "two.bin", _use_new_zipfile_serialization=False)  # legacy format
    one = load_learned(tmp_path / "learned_embeds.bin", d_model=D)
    assert one.name == "<cat-toy>" and one.vectors.shape == (1, D) and torch.equal(one.vectors[0], v1)
    two = read_embedding(tmp_path / "two.bin")
    assert two.layout == "diffusers" and torch.equal(two.parts["two.bin"], v2)


def test_sdxl_pair_in_both_containers(tmp_path):
    l, g = torch.randn(2, 32), torch.randn(2, 48)
    torch.save({"clip_l": l, "clip_g": g}, tmp_path / "pair.pt")
    save_file({"clip_l": l, "clip_g": g}, str(tmp_path / "pair.safetensors"))
    for f in ("pair.pt", "pair.safetensors"):
        ef = read_embedding(tmp_path / f)
        assert ef.is_pair and ef.layout == "sdxl" and ef.hints == {"clip_l": 1, "clip_g": 2}
        assert torch.equal(ef.parts["clip_l"], l) and torch.equal(ef.parts["clip_g"], g)
        assert torch.equal(load_learned(tmp_path / f, d_model=48).vectors, g)
        assert torch.equal(load_learned(tmp_path / f, encoder=1).vectors, l)
    with pytest.raises(GeomkitError, match="no part of dimension 40"):
        load_learned(tmp_path / "pair.pt", d_model=40)


def test_malicious_pickle_is_refused_and_its_command_never_runs(tmp_path, tiny_dir, capsys):
    marker = tmp_path / "PWNED"
    evil_zip, evil_raw = tmp_path / "evil.pt", tmp_path / "evil.bin"
    torch.save({"string_to_param": {"*": torch.randn(1, D)}, "name": Evil(marker)}, str(evil_zip))
    with open(evil_raw, "wb") as fh:
        pickle.dump({"<x>": Evil(marker)}, fh)
    for f in (evil_zip, evil_raw):
        with pytest.raises(GeomkitError, match="refused by the safe loader") as info:
            read_embedding(f)
        assert str(f) in str(info.value) and "nothing in it was run" in str(info.value)
    out = tmp_path / "conv.safetensors"
    assert_one_line_error(*run_cli(capsys, "convert", evil_zip, "--to", "diffusers", "--out", out)[::2], "refused by the safe loader")
    assert_one_line_error(
        *run_cli(capsys, "neighbors", "--embedding", evil_raw, "--model", tiny_dir("clip"), "--out", tmp_path / "n")[::2], "evil.bin"
    )
    assert_one_line_error(
        *run_cli(capsys, "inspect", evil_zip, "--model", tiny_dir("clip"), "--out", tmp_path / "i")[::2], "refused"
    )
    assert not marker.exists() and not out.exists() and not (tmp_path / "i").exists()
    # the test is meaningful: a plain unpickle of the same file WOULD have run the command
    with open(evil_raw, "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_damaged_and_unknown_files(tmp_path):
    torch.save({"<t>": torch.randn(2, D)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    save_file({"<t>": torch.randn(2, D)}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-20])
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "text.bin").write_text("this is not an embedding at all\n")
    torch.save({"foo": 1, "bar": "x"}, tmp_path / "odd.pt")
    torch.save([torch.randn(D)], tmp_path / "list.pt")
    save_file({"a": torch.randn(1, D), "b": torch.randn(1, D)}, str(tmp_path / "two.safetensors"))
    cases = {
        "cut.pt": "truncated or corrupt",
        "cut.safetensors": "truncated or corrupt",
        "empty.bin": "empty",
        "text.bin": "not a readable PyTorch pickle",
        "odd.pt": "unknown embedding layout",
        "list.pt": "not a dictionary",
        "two.safetensors": "holds 2 tensors",
        "missing.pt": "not found",
    }
    for name, needle in cases.items():
        with pytest.raises(GeomkitError, match=needle) as info:
            read_embedding(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    # a dimension that fits no encoder
    with pytest.raises(GeomkitError, match="does not match the model's 48"):
        load_learned(tmp_path / "ok.pt", d_model=48)


@pytest.mark.parametrize(
    "vec, needle",
    [
        (torch.zeros(0, D), "holds no vectors"),
        (torch.zeros(2, 0), "vectors are empty"),
        (torch.zeros(1, D), "all zeros"),
        (torch.cat([torch.randn(2, D), torch.zeros(1, D)]), "vector 2 of 3 is all zeros"),
        (torch.full((1, D), float("nan")), "NaN or infinite"),
        (torch.tensor([[float("inf")] + [1.0] * (D - 1)]), "NaN or infinite"),
    ],
    ids=["no-vectors", "empty-vectors", "zero", "one-zero-row", "nan", "inf"],
)
def test_unusable_vectors_are_one_line_errors(tmp_path, tiny_dir, capsys, vec, needle):
    f = tmp_path / "bad.safetensors"
    save_file({"<bad>": vec.contiguous()}, str(f))
    torch.save({"string_to_param": {"*": vec}, "name": "bad"}, tmp_path / "bad.pt")
    for path in (f, tmp_path / "bad.pt"):
        with pytest.raises(GeomkitError, match=needle):
            read_embedding(path)
    model = tiny_dir("clip")
    assert_one_line_error(*run_cli(capsys, "neighbors", "--embedding", f, "--model", model, "--out", tmp_path / "n")[::2], str(f))
    good = tmp_path / "good.safetensors"
    save_file({"<bad>": torch.randn(1, D)}, str(good))
    out = tmp_path / "mix"
    assert_one_line_error(*run_cli(capsys, "interpolate", good, f, "--out", out)[::2], needle)
    assert not out.exists() or not list(out.glob("*.safetensors"))  # no NaN files written


def test_every_command_reads_pt_files(tmp_path, tiny_dir, capsys):
    """One reader: the commands that take an embedding file accept an A1111 .pt."""
    vec = torch.randn(1, D)
    pt = a1111_pt(tmp_path / "style.pt", vec)
    model = tiny_dir("clip")
    code, out, _ = run_cli(capsys, "neighbors", "--embedding", pt, "--model", model, "--out", tmp_path / "n", "-k", "3")
    assert code == 0 and "my-style" in json.loads((tmp_path / "n" / "results.json").read_text())["queries"]
    code, _, _ = run_cli(capsys, "norms", "--embedding", pt, "--model", model, "--out", tmp_path / "m")
    res = json.loads((tmp_path / "m" / "results.json").read_text())
    assert code == 0 and res["embeddings"]["my-style"]["norm"] == pytest.approx(float(vec.double().norm()), rel=1e-6)
    from geomkit.generation import read_tokens

    (tok,) = read_tokens([pt])
    assert tok.name == "my-style" and torch.equal(next(iter(tok.parts.values())), vec)


# ---- convert -----------------------------------------------------------------------------------
def test_convert_round_trips(tmp_path, capsys):
    vec = torch.randn(2, D)
    pt = a1111_pt(tmp_path / "style.pt", vec)
    out = tmp_path / "style-diffusers.safetensors"
    code, text, _ = run_cli(capsys, "convert", pt, "--to", "diffusers", "--out", out)
    assert code == 0 and "read back identical" in text
    assert set(load_file(str(out))) == {"my-style"} and torch.equal(load_file(str(out))["my-style"], vec)
    # diffusers -> a1111 -> diffusers under another name: the vectors never change
    a1 = tmp_path / "mystyle.safetensors"
    assert run_cli(capsys, "convert", out, "--to", "a1111", "--out", a1)[0] == 0
    assert set(load_file(str(a1))) == {"emb_params"} and torch.equal(load_file(str(a1))["emb_params"], vec)
    back = tmp_path / "back.safetensors"
    assert run_cli(capsys, "convert", a1, "--to", "diffusers", "--token", "<s>", "--out", back)[0] == 0
    assert torch.equal(load_file(str(back))["<s>"], vec)
    # 1-D diffusers .bin -> (1, d)
    torch.save({"<v>": vec[0]}, tmp_path / "learned_embeds.bin")
    assert run_cli(capsys, "convert", tmp_path / "learned_embeds.bin", "--to", "diffusers", "--out", tmp_path / "v.safetensors")[0] == 0
    assert load_file(str(tmp_path / "v.safetensors"))["<v>"].shape == (1, D)
    # SDXL: from the two per-encoder files (in either order) and from a .pt pair
    l, g = torch.randn(2, 32), torch.randn(2, 48)
    save_file({"<t>": l}, str(tmp_path / "learned_embeds.safetensors"))
    save_file({"<t>": g}, str(tmp_path / "learned_embeds_2.safetensors"))
    torch.save({"clip_l": l, "clip_g": g}, tmp_path / "pair.pt")
    # names that suggest the wrong encoder (the CLIP-L part named *_2): the dimensions decide
    save_file({"<t>": l}, str(tmp_path / "dog_2.safetensors"))
    save_file({"<t>": g}, str(tmp_path / "dogxl.safetensors"))
    for i, ins in enumerate(
        (["learned_embeds_2.safetensors", "learned_embeds.safetensors"], ["learned_embeds.safetensors", "learned_embeds_2.safetensors"], ["pair.pt"],
         ["dog_2.safetensors", "dogxl.safetensors"])
    ):
        o = tmp_path / f"sdxl{i}.safetensors"
        assert run_cli(capsys, "convert", *[tmp_path / f for f in ins], "--to", "sdxl", "--out", o)[0] == 0
        st = load_file(str(o))
        assert torch.equal(st["clip_l"], l) and torch.equal(st["clip_g"], g)
    # one part of a pair, chosen by --encoder
    assert run_cli(capsys, "convert", tmp_path / "pair.pt", "--to", "diffusers", "--token", "<g>", "--encoder", "2", "--out", tmp_path / "g.safetensors")[0] == 0
    assert torch.equal(load_file(str(tmp_path / "g.safetensors"))["<g>"], g)


def test_convert_bad_requests(tmp_path, capsys):
    pt = a1111_pt(tmp_path / "style.pt", torch.randn(1, D))
    torch.save({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)}, tmp_path / "pair.pt")
    cases = [
        ((pt, "--to", "sdxl", "--out", tmp_path / "a.safetensors"), "needs the token for both SDXL text encoders"),
        ((pt, pt, "--to", "sdxl", "--out", tmp_path / "a.safetensors"), "same dimension"),
        ((tmp_path / "pair.pt", "--to", "diffusers", "--out", tmp_path / "a.safetensors"), "--encoder 1 (clip_l) or 2"),
        ((pt, "--to", "diffusers", "--out", tmp_path / "a.bin"), "name it *.safetensors"),
        ((pt, "--to", "diffusers", "--out", pt), "name it *.safetensors"),
    ]
    for argv, needle in cases:
        assert_one_line_error(*run_cli(capsys, "convert", *argv)[::2], needle)
    assert not (tmp_path / "a.safetensors").exists()
    (tmp_path / "exists.safetensors").write_bytes(b"keep")
    assert_one_line_error(*run_cli(capsys, "convert", pt, "--to", "a1111", "--out", tmp_path / "exists.safetensors")[::2], "--force")
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep"


def test_diffusers_loads_convert_outputs(tmp_path, tiny_dir, capsys):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    vec = torch.randn(2, D)
    pt = a1111_pt(tmp_path / "style.pt", vec)
    diff, a1 = tmp_path / "d.safetensors", tmp_path / "a.safetensors"
    assert run_cli(capsys, "convert", pt, "--to", "diffusers", "--token", "<style>", "--out", diff)[0] == 0
    assert run_cli(capsys, "convert", pt, "--to", "a1111", "--out", a1)[0] == 0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir("sd"), safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(diff))
    pipe.load_textual_inversion(str(a1), token="<a1>")
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    for tok, rows in (("<style>", vec), ("<a1>", vec)):
        ids = pipe.tokenizer.convert_tokens_to_ids([tok, f"{tok}_1"])
        assert torch.equal(table[ids], rows)

    l, g = torch.randn(1, 32), torch.randn(1, 48)
    torch.save({"clip_l": l, "clip_g": g}, tmp_path / "pair.pt")
    sx = tmp_path / "sdxl.safetensors"
    assert run_cli(capsys, "convert", tmp_path / "pair.pt", "--to", "sdxl", "--out", sx)[0] == 0
    state = load_file(str(sx))
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_dir("sdxl"))
    pipe.load_textual_inversion(state["clip_l"], token="<p>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="<p>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    for tk, te, rows in ((pipe.tokenizer, pipe.text_encoder, l), (pipe.tokenizer_2, pipe.text_encoder_2, g)):
        assert torch.equal(te.get_input_embeddings().weight[tk.convert_tokens_to_ids("<p>")].detach(), rows[0])


def test_container_is_told_by_content_not_suffix(tmp_path):
    """A safetensors header length whose low byte is 0x80 (a pickle's first byte) is still safetensors;
    a diffusers pickle renamed .safetensors is still read (safely) as a pickle."""
    name = next(n for n in range(1, 300) if _header_low_byte(tmp_path, n) == 0x80)
    f = tmp_path / "h.safetensors"
    assert read_embedding(f).name == "<" + "x" * name + ">" and read_embedding(f).container == "safetensors"
    torch.save({"<p>": torch.randn(2, D)}, tmp_path / "renamed.safetensors")
    ef = read_embedding(tmp_path / "renamed.safetensors")
    assert ef.container == "pickle" and ef.name == "<p>"


def _header_low_byte(tmp_path, n):
    save_file({"<" + "x" * n + ">": torch.ones(1, D)}, str(tmp_path / "h.safetensors"))
    return (tmp_path / "h.safetensors").read_bytes()[0]
