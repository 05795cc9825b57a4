"""The run record: what ``fastntk run NAME --out DIR`` leaves behind besides
the figures: NAME.csv (the table) and NAME.json (the settings, the command,
the runtime, the files written, and the versions of everything involved)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

from .registry import Experiment
from .tables import save_csv


def versions(device=None) -> dict:
    """fastntk / torch / numpy / python versions, the platform, the device and the date."""
    import numpy
    import torch

    from .. import __version__, backend

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


def run_and_record(experiment: Experiment, args, argv: list[str] | None = None) -> dict:
    """Run ``experiment`` with parsed ``args`` and write its CSV and JSON
    record next to its figures in ``args.out``; print one line listing the
    files; return the record."""
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    rows, settings, files = experiment.run(args)
    runtime = time.perf_counter() - t0
    files = dict(files)
    files["csv"] = save_csv(rows, os.path.join(args.out, f"{experiment.name}.csv"))
    command = " ".join(["fastntk"] + list(sys.argv[1:] if argv is None else argv))
    record = {"experiment": experiment.name, "settings": settings, "command": command,
              "runtime_s": round(runtime, 3), "files": files, "versions": versions(getattr(args, "device", None)),
              "n_rows": len(rows)}
    files["json"] = os.path.join(args.out, f"{experiment.name}.json")
    with open(files["json"], "w") as f:
        json.dump(record, f, indent=2, default=str)
    print(f"fastntk run {experiment.name}: {len(rows)} rows in {runtime:.1f} s; wrote "
          + ", ".join(files[k] for k in ("csv", "png", "json") if k in files)
          + "".join(f", {p}" for k, p in files.items() if k not in ("csv", "png", "json")))
    return record
