"""Progress reporting protocol: a bar for people, JSON lines for machines.

Library code receives a :class:`Progress` and calls ``start``, ``advance`` and
``close``; it checks ``cancelled`` between tiles so a GUI can stop the work.
Nothing here prints unless the CLI chose a reporter.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    cancelled: bool

    def start(self, total: int, desc: str = "") -> None: ...

    def advance(self, n: int = 1, **info) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Reports nothing."""

    cancelled = False

    def start(self, total: int, desc: str = "") -> None:
        pass

    def advance(self, n: int = 1, **info) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress:
    """A tqdm bar on stderr."""

    cancelled = False

    def __init__(self, stream: IO[str] | None = None):
        self._bar = None
        self._stream = stream or sys.stderr

    def start(self, total: int, desc: str = "") -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, desc=desc, unit="tile", file=self._stream, dynamic_ncols=True)

    def advance(self, n: int = 1, **info) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class JsonlProgress:
    """One JSON object per line: ``{"event": "start"|"progress"|"end", ...}``.

    The QGIS plugin and other programs read this from the CLI's stdout.
    """

    cancelled = False

    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream or sys.stdout
        self._total = 0
        self._done = 0
        self._desc = ""
        self._t0 = time.monotonic()

    def _emit(self, obj: dict) -> None:
        self._stream.write(json.dumps(obj, default=str) + "\n")
        self._stream.flush()

    def start(self, total: int, desc: str = "") -> None:
        self._total, self._done, self._desc, self._t0 = int(total), 0, desc, time.monotonic()
        self._emit({"event": "start", "desc": desc, "total": self._total})

    def advance(self, n: int = 1, **info) -> None:
        self._done += n
        self._emit(
            {
                "event": "progress",
                "desc": self._desc,
                "done": self._done,
                "total": self._total,
                "elapsed_s": round(time.monotonic() - self._t0, 3),
                **info,
            }
        )

    def close(self) -> None:
        if self._total or self._done:
            self._emit({"event": "end", "desc": self._desc, "done": self._done, "total": self._total,
                        "elapsed_s": round(time.monotonic() - self._t0, 3)})
            self._total = self._done = 0


def make_progress(kind: str = "auto") -> Progress:
    """Build a reporter: ``auto`` (bar on a terminal, else none), ``bar``, ``jsonl``, ``none``."""
    if kind == "auto":
        kind = "bar" if sys.stderr.isatty() else "none"
    if kind == "bar":
        return BarProgress()
    if kind == "jsonl":
        return JsonlProgress()
    return NullProgress()
