"""A stand-in for QGIS's QgsProcessingFeedback (no QGIS needed): records what an algorithm or the runner
reports, and cancels once the progress reaches ``cancel_at``."""

from __future__ import annotations


class FakeFeedback:
    def __init__(self, cancel_at: float | None = None):
        self.cancel_at, self.cancelled = cancel_at, False
        self.progress: list[float] = []
        self.log: list[tuple[str, str]] = []  # (kind, text): text, info, warning, console, command, debug, error

    @property
    def texts(self) -> list[str]:
        """The progress texts."""
        return [t for kind, t in self.log if kind == "text"]

    @property
    def commands(self) -> list[str]:
        return [t for kind, t in self.log if kind == "command"]

    @property
    def console(self) -> list[str]:
        """Every line shown in the log panel other than commands."""
        return [t for kind, t in self.log if kind not in ("text", "command")]

    def isCanceled(self):  # noqa: N802
        return self.cancelled

    def setProgress(self, p):  # noqa: N802
        self.progress.append(p)
        if self.cancel_at is not None and p >= self.cancel_at:
            self.cancelled = True

    def setProgressText(self, t):  # noqa: N802
        self.log.append(("text", t))

    def pushInfo(self, t):  # noqa: N802
        self.log.append(("info", t))

    def pushWarning(self, t):  # noqa: N802
        self.log.append(("warning", t))

    def pushConsoleInfo(self, t):  # noqa: N802
        self.log.append(("console", t))

    def pushCommandInfo(self, t):  # noqa: N802
        self.log.append(("command", t))

    def pushDebugInfo(self, t):  # noqa: N802
        self.log.append(("debug", t))

    def reportError(self, t, fatal=False):  # noqa: N802
        self.log.append(("error", t))
