"""Command line: ``fastntk demo`` and ``fastntk run EXPERIMENT`` (also
``python -m fastntk ...``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

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
    parser.add_argument("--version", action="version", version=_version())
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


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser of the deepest command named in argv (``fastntk run
    dispersion ...`` -> the ``dispersion`` parser), so that an error prints
    that command's usage rather than the top-level one."""
    for word in argv:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subparsers and word in subparsers[0].choices:
            parser = subparsers[0].choices[word]
    return parser


_ACCUMULATING = (argparse._ExtendAction, argparse._AppendAction, argparse._CountAction)


def _refuse_repeated_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """argparse keeps only the last of a repeated flag; refuse that instead of
    silently dropping values (flags that accumulate are fine)."""
    for action in parser._actions:
        if isinstance(action, _ACCUMULATING) or not action.option_strings:
            continue
        given = [w for w in argv if w.split("=", 1)[0] in action.option_strings]
        if len(given) > 1:
            parser.error(f"argument {'/'.join(action.option_strings)}: given {len(given)} times; give it once"
                         + (" with all its values" if action.nargs in ("+", "*") else ""))


def _check_device(parser: argparse.ArgumentParser, device: str | None) -> None:
    """Refuse a --device that is not a torch device, or that this machine
    does not have, before anything runs."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        parser.error(f"argument --device: {device!r} is not a torch device; use cpu or cuda (cuda:N for GPU N)")
    if dev.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: {device!r}: fastntk runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        parser.error(f"argument --device: {device!r}: CUDA is not available ({why}); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        parser.error(f"argument --device: {device!r}: there are {torch.cuda.device_count()} GPUs")


@contextlib.contextmanager
def _output_directory(parser: argparse.ArgumentParser, path: str):
    """Create --out (and check it is writable) before the command runs; if the
    command fails, remove the directories this created that are still
    empty, so a refused command leaves nothing behind."""
    created = []
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        _remove_empty(created)
        parser.error(f"argument --out: cannot write to {path!r}: {exc.strerror or exc}")
    try:
        yield
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(directories: list[str]) -> None:
    for d in directories:  # deepest first
        try:
            os.rmdir(d)
        except OSError:
            return


def _version() -> str:
    import torch

    from . import __version__, backend

    return f"fastntk {__version__} (torch {torch.__version__}, {backend()} ops)"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns 0, or exits with status 2 and a one-line
    message after the command's usage for a bad flag or value."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_parser(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    _refuse_repeated_flags(command, argv)
    _check_device(command, getattr(args, "device", None))
    with _output_directory(command, args.out):
        try:
            if args.command == "demo":
                from .demo import run_demo

                run_demo(out=args.out, n_per_class=args.per_class, width=args.width, seed=args.seed,
                         experiments=not args.skip_experiments)
            elif args.command == "run":
                run_experiment(args, argv)
        except ValueError as exc:
            command.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
