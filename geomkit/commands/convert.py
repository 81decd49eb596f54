"""`geomkit convert`: a learned-embedding file (.pt/.bin/.safetensors, any supported layout) to
safetensors in the layout another tool wants."""

from __future__ import annotations

NAME = "convert"
ORDER = 74
HELP = "convert a learned embedding (.pt/.bin/.safetensors) to diffusers, A1111, SDXL, FLUX or SD3 safetensors"
DESCRIPTION = (
    "Read IN (A1111 .pt, diffusers learned_embeds.bin, or any safetensors embedding; pickles only through "
    "torch.load(weights_only=True), which builds tensors and refuses code) and write --out as safetensors: "
    "--to diffusers {token: (n, d)} (what pipe.load_textual_inversion and `geomkit generate` read), "
    "--to a1111 {\"emb_params\": (n, d)} (A1111/ComfyUI; the prompt word is the file's name), or "
    "--to sdxl {\"clip_l\": (n, 768), \"clip_g\": (n, 1280)} from one SDXL file or from the two per-encoder files, "
    "--to flux {\"clip_l\": (n, 768), \"t5\": (n, 4096)} or --to sd3 {\"clip_l\", \"clip_g\", \"t5\"} from one such file or one "
    "file per encoder (told apart by dimension: CLIP-L < CLIP-G < T5). "
    "The written file is read back and compared before the command succeeds."
)


def add_arguments(p):
    from geomkit.commands._common import existing_file, out_file

    p.add_argument("inputs", nargs="+", type=existing_file, metavar="IN", help="embedding file (two files for --to sdxl: the CLIP-L and the bigG part)")
    p.add_argument("--to", required=True, choices=("diffusers", "a1111", "sdxl", "flux", "sd3"), help="layout to write")
    p.add_argument("--out", required=True, type=out_file, metavar="FILE", help="output file (*.safetensors)")
    p.add_argument("--token", default=None, type=token_name, metavar="TOKEN",
                   help="token name for --to diffusers (the file's key) and --to sdxl (its metadata); default: the name the file "
                        "carries. --to a1111 takes the word from the file name: name --out after the token instead")
    p.add_argument(
        "--encoder", type=int, default=None, choices=(1, 2, 3),
        help="from an SDXL pair to diffusers/a1111: which part (1 = clip_l, 2 = clip_g); from a FLUX file 1 = clip_l, "
             "2 = t5; from an SD3 file 1 = clip_l, 2 = clip_g, 3 = t5",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def token_name(text: str) -> str:
    """argparse type: a token name a prompt can hold: not empty, no spaces (a prompt would split it)."""
    import argparse

    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty token name; give a name such as <my-token>")
    if any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a token name cannot hold spaces (a prompt would split it); e.g. <my-token>")
    from geomkit.models import invisible_char

    if invisible_char(text):
        raise argparse.ArgumentTypeError(f"{text!r}: holds the invisible character {invisible_char(text)}, which no prompt can be "
                                         "typed with; e.g. <my-token>")
    return text


def run(args) -> int:
    from pathlib import Path

    from geomkit.embeddings_io import convert_tensors, read_embedding, write_converted
    from geomkit.errors import GeomkitError

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".safetensors":  # first: a .pt --out is most likely a swapped argument
        raise GeomkitError(f"--out {args.out}: converted files are safetensors; name it *.safetensors")
    ins = [Path(p).expanduser() for p in args.inputs]
    if any(out.resolve() == p.resolve() for p in ins if p.exists()):
        raise GeomkitError(f"--out {args.out} is also an input; choose another file name")
    if out.exists() and not args.force:
        raise GeomkitError(f"--out {args.out} exists; pass --force to overwrite it")
    if out.parent.exists() and not out.parent.is_dir():
        raise GeomkitError(f"--out {args.out}: {out.parent} is not a folder")
    if args.token is not None and args.to == "a1111":
        raise GeomkitError(f"--token {args.token} with --to a1111: A1111 and ComfyUI take the prompt word from the file name, "
                           f"not from the file; drop --token and name the file after the token (e.g. --out {out.parent / (args.token.strip('<>') or 'token')}.safetensors)")
    files = [read_embedding(p) for p in ins]
    if args.encoder is not None and not any(f.is_pair or len(f.parts) > 1 for f in files):
        raise GeomkitError(f"--encoder {args.encoder}: picks the part of an SDXL, FLUX or SD3 file, and "
                           f"{', '.join(Path(f.path).name for f in files)} hold{'s' if len(files) == 1 else ''} one part; drop --encoder")
    if args.encoder is not None and args.to in ("sdxl", "flux", "sd3"):
        raise GeomkitError(f"--encoder {args.encoder} with --to {args.to}: the {args.to.upper()} file holds every part; "
                           "drop --encoder")
    tensors = convert_tensors(files, args.to, token=args.token, encoder=args.encoder)
    name = args.token or files[0].name
    back = write_converted(out, tensors, token=name if args.to == "sdxl" else None)

    src = ", ".join(f"{Path(f.path).name} ({f.layout}, {f.container})" for f in files)
    shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in tensors.items())
    print(f"read {src}")
    print(f"wrote {out} ({args.to}: {shapes}); read back identical")
    if args.to == "a1111":
        print(f"A1111/ComfyUI use the file name as the prompt word: {out.stem}")
    elif args.to == "diffusers":
        print(f"token: {back.name}   load with pipe.load_textual_inversion({str(out)!r})")
    else:
        print("load with pipe.load_textual_inversion(state['clip_l'], token=..., text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer) "
              "and state['clip_g'] with text_encoder_2/tokenizer_2")
    return 0
