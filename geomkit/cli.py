"""`geomkit <command>`: argparse subcommands discovered from `geomkit.commands`.

Each command module defines NAME, HELP, ORDER, `add_arguments(parser)` and `run(args) -> int`,
and imports torch/transformers only inside `run`, so `geomkit --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from geomkit import __version__
from geomkit.errors import GeomkitError


def _command_modules():
    import geomkit.commands as pkg

    mods = [importlib.import_module(f"geomkit.commands.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geomkit",
        description="Geometry of token embeddings in text encoders, and a Directional Textual Inversion trainer.",
    )
    parser.add_argument("--version", action="version", version=f"geomkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _quiet_libraries():
    """Library chatter (weight-loading bars, deprecation notes) buries geomkit's own output."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # geomkit never downloads
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("diffusers").setLevel(logging.ERROR)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    _quiet_libraries()
    try:
        return int(args._run(args) or 0)
    except GeomkitError as exc:
        print(f"geomkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geomkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
