"""The experiments by name: what ``fastntk run NAME``, the demo and the tests
look up.

Each experiment module declares one :class:`Experiment`: its name, a one-line
summary, the ``--help`` text (what it measures, the finding it reproduces, its
defaults and the paper's full setting), a function adding its command-line
arguments, and a function running it from the parsed arguments. The CLI
builds one ``fastntk run NAME`` subcommand per registered experiment, so a new
experiment needs no change to the CLI.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Experiment:
    """One experiment, as the command line sees it.

    Attributes
    ----------
    name : the subcommand, ``fastntk run NAME``; also the stem of its files.
    summary : one line for the list of experiments.
    description : the subcommand's ``--help`` text.
    add_arguments : adds the experiment's own flags to an argparse parser
        (``--out``, ``--seed``, ``--device`` and ``--no-progress`` are added
        for every experiment by :func:`add_common_arguments`).
    run : ``run(args) -> (rows, settings, files)``: runs the experiment with
        the parsed arguments, writes its figures into ``args.out``, and
        returns the table, the settings it used (for the JSON record) and
        ``{kind: path}`` of the files it wrote (the CSV and JSON of ``rows``
        are written by :func:`fastntk.experiments.record.run_and_record`).
    """

    name: str
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], tuple]

    @property
    def module(self):
        """The experiment's module (its function, plot and defaults)."""
        return importlib.import_module(self.run.__module__)


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` under its name (a name registers once)."""
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment; got {type(experiment).__name__}")
    if experiment.name in _REGISTRY and _REGISTRY[experiment.name] is not experiment:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered")
    _REGISTRY[experiment.name] = experiment
    return experiment


def names() -> list[str]:
    """The registered experiment names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Experiment:
    """The experiment registered as ``name``; a ValueError lists the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(_REGISTRY)}") from None


# ---------------------------------------------------------------------------
# command-line helpers the experiments share


def range_list(kind):
    """An argparse ``type`` for one item of a list flag: a number, or a range
    ``START:STOP[:STEP]`` (inclusive) of ints; for floats also the word
    ``icml`` (the 16 sigma_w^2 values of Seleznova & Kutyniok, ICML 2022).
    Each item parses to a list: use ``action="extend"`` so repeated flags
    and several items add up."""
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
            from .at_init import ICML_SIGMA_W2

            return list(ICML_SIGMA_W2)
        try:
            return [kind(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}; "
                                             f"got {text!r}") from None
    return parse


def flatten(values):
    """Join the lists :func:`range_list` parsed (None stays None)."""
    return None if values is None else [v for group in values for v in group]


def add_list_argument(parser, flag: str, kind, metavar: str, help: str) -> None:
    """A flag taking one or more numbers or ranges; repeating it adds values."""
    parser.add_argument(flag, nargs="+", type=range_list(kind), action="extend", metavar=metavar, help=help)


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """--out, --seed, --device, --no-progress: every experiment has them."""
    parser.add_argument("--seed", type=int, default=0, help="first seed; init i uses SEED + i (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda (default: cpu)")
    parser.add_argument("--out", default="results",
                        help=f"output directory for {name}.csv, {name}.png and {name}.json (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
