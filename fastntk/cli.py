"""Command line: ``fastntk demo`` (also ``python -m fastntk demo``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastntk",
        description="Exact empirical NTKs of dense MLPs, layer by layer, without Jacobians.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="layerwise NTK of a wide MLP on scikit-learn's digits, "
                                       "timed against torch.func, with a heatmap")
    demo.add_argument("--out", default="demo-output", help="directory for the figure (default: %(default)s)")
    demo.add_argument("--width", type=int, default=1024, help="hidden width (default: %(default)s)")
    demo.add_argument("--per-class", type=int, default=50, help="digits per class (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="initialization seed (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(out=args.out, n_per_class=args.per_class, width=args.width, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
