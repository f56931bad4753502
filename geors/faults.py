"""Deterministic kill points for crash tests.

Code that writes outputs calls :func:`checkpoint` at the moments where a crash
matters (``start``, ``create``, ``commit``, ``batch``, ``finish``). Normally
this costs one environment lookup. A crash test sets ``GEORS_FAULT=NAME`` (or
``NAME:N``, the N-th time that point is reached) and optionally
``GEORS_FAULT_SIGNAL`` (``SIGKILL`` by default; ``SIGTERM``, ``SIGINT``, a bare
name such as ``TERM`` or a number), and the process sends itself that signal
there, so a test can stop a real run at an exact moment instead of guessing
with sleeps.

Points used by geors:

- ``start``: before the output is touched (pipeline).
- ``create``: a new GeoPackage has its first layer, the other layers are not
  created yet (:mod:`geors.vector`).
- ``commit``: inside a batch transaction, just before ``COMMIT``
  (:mod:`geors.vector`).
- ``batch``: between two batches (pipeline).
- ``finish``: every tile is written, the run is not marked finished yet
  (:mod:`geors.vector`).
"""

from __future__ import annotations

import os
import signal

__all__ = ["checkpoint", "ENV_POINT", "ENV_SIGNAL"]

ENV_POINT = "GEORS_FAULT"
ENV_SIGNAL = "GEORS_FAULT_SIGNAL"

_hits: dict[str, int] = {}


def checkpoint(name: str) -> None:
    """Send this process the configured signal when ``GEORS_FAULT`` names this point.

    Args:
        name: the kill point, e.g. ``"commit"``. ``GEORS_FAULT=commit`` fires on
            the first time it is reached, ``GEORS_FAULT=commit:3`` on the third.
    """
    spec = os.environ.get(ENV_POINT)
    if spec is None:
        return
    _fire(spec, name)


def _fire(spec: str, name: str) -> None:
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != (int(nth) if nth else 1):
        return
    sig = _signal(os.environ.get(ENV_SIGNAL, "SIGKILL"))
    os.kill(os.getpid(), sig)
    if sig == signal.SIGKILL:
        signal.pause()  # never run past the point while the kill is delivered
    # other signals: their handler (or KeyboardInterrupt for SIGINT) takes over, as for a real signal


def _signal(value: str) -> signal.Signals:
    value = value.strip().upper()
    if value.isdigit():
        return signal.Signals(int(value))
    if not value.startswith("SIG"):
        value = "SIG" + value
    return signal.Signals[value]
