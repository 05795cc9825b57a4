"""One progress-bar policy for every long-running call of the library.

``progress=True`` always shows a tqdm bar on stderr, ``False`` never, and
``None`` (the default everywhere) shows one only when the call is worth it
(the caller's estimate) and stderr is a terminal, so scripts and logs stay
clean. Callers always get an object with ``update`` and ``close``.
"""

from __future__ import annotations

import sys


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def check_progress(progress) -> bool | None:
    """Validate a ``progress`` argument: None, True or False."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be None (auto), True or False; got {type(progress).__name__} {progress!r}")
    return progress


def progress_bar(progress: bool | None, total: int, desc: str, *, worth_it: bool, unit: str = "it"):
    """A tqdm bar of ``total`` steps, or a no-op bar (see the module doc)."""
    show = check_progress(progress)
    if show is None:
        show = worth_it and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
