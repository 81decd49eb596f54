"""`geomkit <command>`: argparse subcommands discovered from `geomkit.commands`.

Each command module defines NAME, HELP, ORDER, `add_arguments(parser)` and `run(args) -> int`,
and imports torch/transformers only inside `run`, so `geomkit --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

from geomkit import __version__
from geomkit.errors import GeomkitError


def _command_modules():
    import geomkit.commands as pkg

    mods = [importlib.import_module(f"geomkit.commands.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    mods = [m for m in mods if hasattr(m, "NAME") and hasattr(m, "run")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (`geomkit CMD: error: ... (see geomkit CMD --help)`, exit 2)
    instead of a usage block, and list values that start with a minus sign (`--scales -1,2`,
    `--seeds -3`) read as values, so that the option's own check can say what is wrong with them.
    Subparsers inherit the class (argparse makes them with `type(parent)`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(?:\d|\.\d|inf|nan)[\w.,+:-]*$", re.IGNORECASE)

    def error(self, message):
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="geomkit",
        description="Geometry of token embeddings in text encoders, and a Directional Textual Inversion trainer.",
    )
    parser.add_argument("--version", action="version", version=f"geomkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}  # name -> its parser, so that errors found after parsing name the command
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        parser.commands[mod.NAME] = p
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _quiet_libraries():
    """Library chatter (weight-loading bars, deprecation notes) buries geomkit's own output."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # geomkit never downloads
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    # diffusers sets its own logger's level when first imported, so a setLevel here would be undone
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _release_run_locks() -> None:
    runlock = sys.modules.get("geomkit.runlock")  # imported only by commands that lock a folder
    if runlock is not None:
        runlock.release_held()


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            parser.commands.get(getattr(args, "command", None), parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, or a one-line usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    _quiet_libraries()
    from geomkit import report

    mark = report.created_mark()
    try:
        return int(args._run(args) or 0)
    except GeomkitError as exc:
        _release_run_locks()
        report.remove_created_if_empty(mark)  # a refused command leaves no empty --out folder behind
        text = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"geomkit {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _release_run_locks()
        report.remove_created_if_empty(mark)
        print(f"geomkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
