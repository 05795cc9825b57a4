"""Command line: ``fastntk demo`` and ``fastntk run EXPERIMENT`` (also
``python -m fastntk ...``)."""

from __future__ import annotations

import argparse
import sys

RUN_DESCRIPTION = """\
Run one experiment on the empirical NTK and write, into --out:
EXPERIMENT.csv (a tidy table, one row per setting), EXPERIMENT.png (the
figure) and EXPERIMENT.json (the settings, the versions of torch / fastntk /
python, the date, the device and the runtime). Every experiment draws init i
with seed SEED + i, so each number can be reproduced one network at a time.
`fastntk run EXPERIMENT --help` explains an experiment: what it measures, the
finding it reproduces, its defaults and the paper's full setting.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastntk",
        description="Exact empirical NTKs of dense MLPs, layer by layer, without Jacobians.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="layerwise NTK of a wide MLP on scikit-learn's digits, "
                                       "timed against torch.func, with a heatmap; then reduced "
                                       "dispersion and training experiments")
    demo.add_argument("--out", default="demo-output", help="directory for the figures (default: %(default)s)")
    demo.add_argument("--width", type=int, default=1024, help="hidden width (default: %(default)s)")
    demo.add_argument("--per-class", type=int, default=50, help="digits per class (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="initialization seed (default: %(default)s)")
    demo.add_argument("--skip-experiments", action="store_true",
                      help="only the digits part, not the reduced experiments")

    from . import experiments

    run = sub.add_parser("run", help="run an experiment (" + ", ".join(experiments.names())
                         + ") and write CSV + PNG + JSON",
                         description=RUN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_sub = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name in experiments.names():
        exp = experiments.get(name)
        parser_e = run_sub.add_parser(name, help=exp.summary, description=exp.description,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        exp.add_arguments(parser_e)
        experiments.registry.add_common_arguments(parser_e, name)
    return parser


def run_experiment(args, argv: list[str] | None = None) -> dict:
    """Run ``args.experiment`` (parsed ``fastntk run`` arguments); returns the JSON record."""
    from .experiments import get
    from .experiments.record import run_and_record

    return run_and_record(get(args.experiment), args, argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(out=args.out, n_per_class=args.per_class, width=args.width, seed=args.seed,
                 experiments=not args.skip_experiments)
    elif args.command == "run":
        try:
            run_experiment(args, argv)
        except ValueError as exc:
            parser.error(f"run {args.experiment}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
