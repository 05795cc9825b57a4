"""Command line: ``fastntk demo`` and ``fastntk run EXPERIMENT`` (also
``python -m fastntk ...``)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time

RUN_DESCRIPTION = """\
Run one of the depth / width / initialization experiments on the empirical
NTK at initialization (Seleznova & Kutyniok, ICML 2022, arXiv 2202.00553) and
write, into --out: EXPERIMENT.csv (a tidy table, one row per setting),
EXPERIMENT.png (the figure) and EXPERIMENT.json (the settings, the versions of
torch / fastntk / python, the date, the device and the runtime).

Network (all experiments): an MLP with DEPTH hidden layers of width WIDTH and
a scalar output, ReLU, standard parametrization (W ~ N(0, sigma_w^2/fan_in)),
biases initialised to zero (--sigma-b 0) but trained, so they count in the
NTK. DEPTH always counts hidden layers (DEPTH + 1 weight layers). Init i uses
seed SEED + i, i.e. it is fastntk.MLP(..., seed=SEED + i): every number can be
reproduced one network at a time. For ReLU with sigma_b = 0 the phases are:
ordered sigma_w^2 < 2, edge of chaos (EOC) sigma_w^2 = 2, chaotic > 2.

experiments:
  dispersion    D = E[T^2] / E[T]^2 of T = Theta(x, x') over inits, vs depth,
                one line per sigma_w^2 coloured by phase, 95% bootstrap error
                bars. Inputs on the unit sphere, input dimension = width,
                x' at the given cosine to x (cosine 1: x' = x). Expect D flat
                in depth in the ordered phase and growing exponentially with
                depth/width at the EOC and in the chaotic phase.
                Defaults: --depths 1:20 --sigma-w2 <the 16 ICML values
                0.5 .. 3.5> --width 100 --inits 500 --cosine 1.0 0.5 0.0.
                The paper's full grid: --depths 1:49 (about 10 min on 2 cores).
  convergence   mean over inits of ||Theta_emp - Theta_inf||_F / ||Theta_inf||_F
                on 4 random unit inputs in R^16 vs width, log-log, with the
                fitted slope per (depth, sigma_w^2) (theory: -1/2). Theta_inf
                is fastntk.infinite.ntk at that width (standard
                parametrization: the expected kernel, which grows with width).
                Also writes convergence_rates.csv.
                Defaults: --width 128 256 512 1024 2048 4096 8192 --depths 1 3
                --sigma-w2 1 2 3 --inits 20 (widths past 4096 are slow on a CPU;
                a GPU helps: --device cuda).
  layer_shares  the mean share of each layer's weight and bias terms in
                Theta(x, x) (per init, then averaged), one line per sigma_w^2:
                which layers dominate the kernel in each phase.
                Defaults: --depths 20 (one value) --sigma-w2 1 1.5 2 2.5 3
                --width 100 --inits 200 --cosine 1.0.

lists and ranges: --depths 1 2 5 10, or 1:20 (1..20 inclusive), or 1:49:4
(step 4); --sigma-w2 accepts the word icml for the 16 ICML values.

examples:
  fastntk run dispersion --out results/                      # ICML setup, depths 1..20
  fastntk run dispersion --depths 1:30 --inits 300 --cosine 0.5 --out results/
  fastntk run convergence --width 128 256 512 1024 --inits 10 --out results/
  fastntk run layer_shares --depths 30 --sigma-w2 1 2 3 --out results/
"""


def _range_list(kind):
    def parse(text: str):
        text = text.strip()
        if ":" in text:
            parts = text.split(":")
            if len(parts) not in (2, 3):
                raise argparse.ArgumentTypeError(f"range must be START:STOP or START:STOP:STEP; got {text!r}")
            try:
                start, stop = int(parts[0]), int(parts[1])
                step = int(parts[2]) if len(parts) == 3 else 1
            except ValueError:
                raise argparse.ArgumentTypeError(f"range bounds must be ints; got {text!r}") from None
            if step < 1 or stop < start:
                raise argparse.ArgumentTypeError(f"range needs START <= STOP and STEP >= 1; got {text!r}")
            return list(range(start, stop + 1, step))
        if kind is float and text.lower() == "icml":
            from .experiments import ICML_SIGMA_W2

            return list(ICML_SIGMA_W2)
        try:
            return [kind(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}; "
                                             f"got {text!r}") from None
    return parse


def _flatten(values):
    return None if values is None else [v for group in values for v in group]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastntk",
        description="Exact empirical NTKs of dense MLPs, layer by layer, without Jacobians.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="layerwise NTK of a wide MLP on scikit-learn's digits, "
                                       "timed against torch.func, with a heatmap; then a reduced "
                                       "NTK-dispersion experiment")
    demo.add_argument("--out", default="demo-output", help="directory for the figures (default: %(default)s)")
    demo.add_argument("--width", type=int, default=1024, help="hidden width (default: %(default)s)")
    demo.add_argument("--per-class", type=int, default=50, help="digits per class (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="initialization seed (default: %(default)s)")
    demo.add_argument("--skip-experiments", action="store_true",
                      help="only the digits part, not the reduced dispersion experiment")

    run = sub.add_parser("run", help="run a depth/width/initialization experiment (dispersion, "
                                     "convergence, layer_shares) and write CSV + PNG + JSON",
                         description=RUN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("experiment", choices=("dispersion", "convergence", "layer_shares"),
                     help="which experiment (see above)")
    run.add_argument("--depths", nargs="+", type=_range_list(int), metavar="D",
                     help="numbers of hidden layers: list and/or ranges A:B[:STEP] "
                          "(layer_shares uses one value)")
    run.add_argument("--sigma-w2", nargs="+", type=_range_list(float), metavar="S",
                     help="weight variances sigma_w^2 (or 'icml' for the 16 ICML values)")
    run.add_argument("--width", nargs="+", type=_range_list(int), metavar="W",
                     help="hidden widths (dispersion: also the input dimension; layer_shares: one value)")
    run.add_argument("--inits", type=int, metavar="N", help="initializations per setting")
    run.add_argument("--cosine", nargs="+", type=float, metavar="C",
                     help="cosines between the two unit inputs (dispersion, layer_shares)")
    run.add_argument("--activation", default="relu",
                     help="activation (default: %(default)s; relu, leaky_relu, identity use the exact "
                          "sigma_w-scaling shortcut, others run one ensemble per sigma_w^2)")
    run.add_argument("--parametrization", default="standard", choices=("standard", "ntk"),
                     help="default: %(default)s (the ICML setup)")
    run.add_argument("--sigma-b", type=float, default=0.0, help="bias std at init (default: %(default)s; "
                     "biases are trained either way)")
    run.add_argument("--seed", type=int, default=0, help="first seed; init i uses SEED + i (default: %(default)s)")
    run.add_argument("--device", default=None, help="torch device for the batched GEMMs, e.g. cpu, cuda "
                                                    "(default: cpu)")
    run.add_argument("--chunk", type=int, default=None, help="inits per batched call (default: automatic, "
                                                             "~256 MB per chunk)")
    run.add_argument("--out", default="results", help="output directory (default: %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _versions(device) -> dict:
    import numpy
    import torch

    from . import __version__, backend

    dev = str(device or "cpu")
    if dev.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(dev))
    else:
        name = platform.processor() or platform.machine()
    return {"fastntk": __version__, "fastntk_backend": backend(), "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": dev, "device_name": name, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_experiment(args, argv: list[str] | None = None) -> dict:
    """Run ``args.experiment`` (parsed ``fastntk run`` arguments); returns the JSON record."""
    from . import experiments as E

    progress = False if args.no_progress else None
    depths, sw2 = _flatten(args.depths), _flatten(args.sigma_w2)
    widths = _flatten(args.width)
    common = dict(activation=args.activation, parametrization=args.parametrization, sigma_b=args.sigma_b,
                  seed=args.seed, device=args.device, chunk=args.chunk)
    os.makedirs(args.out, exist_ok=True)
    name = args.experiment
    t0 = time.perf_counter()
    files = {}
    if name == "dispersion":
        kw = dict(depths=depths or list(range(1, 21)), sigma_w2s=sw2 or list(E.ICML_SIGMA_W2),
                  widths=widths or [100], cosines=args.cosine or [1.0, 0.5, 0.0],
                  n_inits=500 if args.inits is None else args.inits)
        rows = E.dispersion(**kw, **common, progress=progress)
        files["png"] = E.plot_dispersion(rows, os.path.join(args.out, "dispersion.png"))
    elif name == "convergence":
        if args.cosine is not None:
            raise ValueError("--cosine does not apply to convergence (it compares whole kernels on random inputs)")
        kw = dict(widths=widths or [128, 256, 512, 1024, 2048, 4096, 8192], depths=depths or [1, 3],
                  sigma_w2s=sw2 or [1.0, 2.0, 3.0], n_inits=20 if args.inits is None else args.inits)
        rows = E.convergence(**kw, **common, progress=progress)
        files["png"] = E.plot_convergence(rows, os.path.join(args.out, "convergence.png"))
        files["rates_csv"] = E.save_csv(E.convergence_rates(rows), os.path.join(args.out, "convergence_rates.csv"))
    else:
        for flag, vals in (("--depths", depths), ("--width", widths), ("--cosine", args.cosine)):
            if vals is not None and len(vals) != 1:
                raise ValueError(f"layer_shares takes one value of {flag}; got {vals}")
        kw = dict(depth=depths[0] if depths else 20, sigma_w2s=sw2 or [1.0, 1.5, 2.0, 2.5, 3.0],
                  width=widths[0] if widths else 100, n_inits=200 if args.inits is None else args.inits,
                  cosine=args.cosine[0] if args.cosine else 1.0)
        rows = E.layer_shares(**kw, **common)
        files["png"] = E.plot_layer_shares(rows, os.path.join(args.out, "layer_shares.png"))
    files["csv"] = E.save_csv(rows, os.path.join(args.out, f"{name}.csv"))
    record = {"experiment": name, "settings": {**kw, **common}, "command": " ".join(["fastntk"] + list(sys.argv[1:] if argv is None else argv)),
              "runtime_s": round(time.perf_counter() - t0, 3), "files": files, "versions": _versions(args.device),
              "n_rows": len(rows)}
    path = os.path.join(args.out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=str)
    files["json"] = path
    print(f"fastntk run {name}: {len(rows)} rows in {record['runtime_s']:.1f} s; wrote "
          + ", ".join(files[k] for k in ("csv", "png", "json")) + ("" if "rates_csv" not in files
                                                                   else f", {files['rates_csv']}"))
    return record


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
