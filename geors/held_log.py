"""Warnings held back while a run is checked, shown only when it goes ahead.

The checks before a run (stages load their models, read the boxes, compare the
scenes with the model) may log warnings, e.g. "no SAM checkpoint found" or
"0.5 m pixels, the model was trained at 0.1 m". When a later check refuses the
run (an output that already holds the scene, a bad option), those warnings are
noise above the one message that matters. :func:`hold_warnings` keeps the
``geors`` loggers' warnings from every handler until :meth:`HeldWarnings.release`
(the run goes ahead: they are emitted, in order) or :meth:`HeldWarnings.drop`
(the run was refused). The CLI holds them around a pipeline command; the
pipeline calls :func:`release_held` once every check has passed, just before
the output is touched. Library callers hold nothing unless they ask.
"""

from __future__ import annotations

import logging

__all__ = ["HeldWarnings", "hold_warnings", "release_held"]

_current: HeldWarnings | None = None


class HeldWarnings(logging.Filter):
    """A filter on every handler that keeps ``geors.*`` records of level WARNING and above."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._handlers: list[logging.Handler] = []
        self._active = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self._active and record.levelno >= logging.WARNING and record.name.split(".")[0] == "geors":
            if not any(r is record for r in self.records):  # one record reaches several handlers
                self.records.append(record)
            return False
        return True

    def _attach(self) -> None:
        seen: set[int] = set()
        for logger in (logging.getLogger(), logging.getLogger("geors")):
            for h in logger.handlers:
                if id(h) not in seen:
                    seen.add(id(h))
                    h.addFilter(self)
                    self._handlers.append(h)
        self._active = True

    def _detach(self) -> None:
        self._active = False
        for h in self._handlers:
            h.removeFilter(self)
        self._handlers = []

    def release(self) -> None:
        """Stop holding and emit the held warnings, in order."""
        global _current
        if _current is self:
            _current = None
        self._detach()
        records, self.records = self.records, []
        for rec in records:
            logging.getLogger(rec.name).handle(rec)

    def drop(self) -> None:
        """Stop holding and forget the held warnings (the run was refused)."""
        global _current
        if _current is self:
            _current = None
        self._detach()
        self.records = []


def hold_warnings() -> HeldWarnings:
    """Start holding the ``geors`` warnings; call ``release()`` or ``drop()`` on the result."""
    global _current
    held = HeldWarnings()
    held._attach()
    _current = held
    return held


def release_held() -> None:
    """Emit the warnings held by :func:`hold_warnings`, if any (the run goes ahead)."""
    global _current
    if _current is not None:
        held, _current = _current, None
        held.release()
