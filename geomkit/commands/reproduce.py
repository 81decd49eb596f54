"""`geomkit reproduce`: regenerate the findings report on the real models reachable here."""

from __future__ import annotations

NAME = "reproduce"
ORDER = 90
HELP = "re-measure the paper's claims on the real models: figures/, probes/ and figures/REPORT.md"
DESCRIPTION = (
    "Runs neighbors, norms, probe-position (geomkit's protocol and the DTI authors'), residual-angles and attenuation on "
    "gemma3-270m, minilm-l6 and whisper-tiny-en; trains TI and DTI tokens with the LM objective (Gemma, and Whisper with a "
    "high-lr TI); then the seeds experiment: on Whisper 3 concepts x 3 seeds and on Gemma 3 seeds, each with TI, its "
    "rescaled-to-m* control, DTI and DTI with kappa 0, measured by one residual-angles and one position-probe call, summarised "
    "in probes/<model>/trained-seeds/results.json; slerp between DTI tokens with their neighbours; the inspect examples. "
    "Writes figures/REPORT.md (claim, the paper's number, geomkit's with n and range, a verdict by one rule) and "
    "figures/claims.json. Finished steps are reused; --quick runs a small version."
)


def add_arguments(p):
    p.add_argument("--quick", action="store_true", help="reduced sizes for CI (a few minutes); results go to runs/reproduce-quick unless --out says otherwise")
    from geomkit.commands._common import out_dir

    p.add_argument("--out", default=None, type=out_dir, metavar="DIR", help="write everything under DIR: raw outputs in DIR/probes, figures and REPORT.md in DIR/figures "
                   "(default: the repository's probes/ and figures/, or runs/reproduce-quick with --quick)")
    p.add_argument("--results", default=None, type=out_dir, metavar="DIR", help="raw outputs per model and step, overriding --out (default: OUT/probes; without --out probes/, or runs/reproduce-quick/probes with --quick)")
    p.add_argument("--figures", default=None, type=out_dir, metavar="DIR", help="PNGs and REPORT.md, overriding --out (default: OUT/figures; without --out figures/, or runs/reproduce-quick/figures with --quick)")
    p.add_argument("--force", action="store_true", help="rerun every step instead of reusing finished ones")
    p.add_argument("--only", nargs="+", default=None, metavar="STEP", help="run only these steps (e.g. neighbors norms)")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL", help="run only the steps of these models (gemma3-270m minilm-l6 whisper-tiny-en)")
    p.add_argument("--t5-random", action="store_true",
                   help="instead: the mechanism checks on the T5 encoder of a tiny RANDOM FLUX.1 pipeline (no real T5 "
                        "weights are reachable here; not findings), written to FIGURES/REPORT-T5-RANDOM.md")


def run(args) -> int:
    from pathlib import Path

    from geomkit import report
    from geomkit.errors import GeomkitError
    from geomkit.reproduce import MODELS, plan, run_steps, write_report

    if args.t5_random:
        return _t5_random(args)
    known = {s.name for s in plan(Path("."), args.quick)}
    unknown = [s for s in args.only or [] if s not in known]
    if unknown:
        raise GeomkitError(f"--only: unknown step(s) {', '.join(unknown)}; steps are {', '.join(sorted(known))}")
    unknown = [m for m in args.models or [] if m not in MODELS]
    if unknown:
        raise GeomkitError(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    chosen = [s for s in plan(Path("."), args.quick)
              if (not args.only or s.name in args.only) and (not args.models or s.model in args.models)]
    if not chosen:
        pairs = sorted({f"{s.name}" for s in plan(Path("."), args.quick) if s.model in (args.models or [])})
        raise GeomkitError(f"--only {' '.join(args.only or [])} with --models {' '.join(args.models or [])}: no step is both; "
                           f"the steps of those models are {', '.join(pairs)}")
    base = Path(args.out).expanduser() if args.out else (Path("runs/reproduce-quick") if args.quick else Path("."))
    results = report.prepare_out(args.results or base / "probes", "--out" if args.out and not args.results else "--results")
    figures = report.prepare_out(args.figures or base / "figures", "--out" if args.out and not args.figures else "--figures")
    steps = [s for s in plan(results, args.quick)
             if (not args.only or s.name in args.only) and (not args.models or s.model in args.models)]
    import signal
    import sys

    from geomkit.reproduce import StepStopped

    def stop(signum, frame):  # outside a training step: stop between steps, with the signal's status
        raise StepStopped(128 + signum, "in progress (finished steps are kept)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        status = run_steps(steps, results, figures, force=args.force)
    except StepStopped as exc:
        print(f"geomkit reproduce: {exc}", file=sys.stderr)
        return exc.code
    finally:
        signal.signal(signal.SIGTERM, previous)
    path = write_report(results, figures, plan(results, args.quick), status, args.quick)
    print(f"\nwrote {path}")
    print(path.read_text().split("## Figures")[0])
    return 0


def _t5_random(args) -> int:
    from pathlib import Path

    from geomkit import report
    from geomkit import reproduce_t5 as t5
    from geomkit.errors import GeomkitError
    from geomkit.reproduce import run_steps

    if args.only or args.models or args.quick:
        raise GeomkitError("--t5-random runs its own small set of steps: give it without --only, --models or --quick")
    base = Path(args.out).expanduser() if args.out else Path(".")
    results = report.prepare_out(args.results or base / "probes", "--out" if args.out and not args.results else "--results")
    figures = report.prepare_out(args.figures or base / "figures", "--out" if args.out and not args.figures else "--figures")
    t5.prepare(results)
    status = run_steps(t5.steps(results), results, figures, force=args.force)
    path = t5.write_report(results, figures, status)
    print(f"\nwrote {path}")
    print(path.read_text().split("## Steps")[0])
    return 0
