"""Exception hierarchy of geors.

Every error that a user can fix derives from :class:`GeorsError` and also from
the matching builtin (``OSError``, ``ValueError``, ``ImportError``), so callers
can catch either. The CLI maps :class:`GeorsError` to exit code 2 ("bad input
or usage") and anything else to exit code 1 ("failure while processing").
Messages name the file concerned and say what to do.
"""

from __future__ import annotations


class GeorsError(Exception):
    """Root of all geors errors caused by input, configuration or environment."""

    exit_code = 2


class SceneReadError(GeorsError, OSError):
    """A scene cannot be opened or read (missing, not a raster, truncated...)."""


class GeoreferenceError(GeorsError, ValueError):
    """A scene has no usable georeferencing (no CRS, GCPs only, rotated grid)."""


class BandError(GeorsError, IndexError):
    """A requested band does not exist, or the band count does not fit a model."""


class ConfigError(GeorsError, ValueError):
    """An option or configuration value is invalid."""


class OutputError(GeorsError, OSError):
    """An output cannot be written (missing directory, incompatible existing file)."""


class LabelError(GeorsError, ValueError):
    """Training or prompt labels are empty, outside the scene or unreadable."""


class ModelError(GeorsError, ValueError):
    """A model file is missing, corrupt, foreign or does not fit the scene."""


class DependencyNotFoundError(GeorsError, ImportError):
    """An optional dependency is missing; the message names the pip extra."""


class DownloadError(GeorsError, OSError):
    """A download failed (offline, blocked, checksum mismatch)."""


class ProcessingError(GeorsError, RuntimeError):
    """Processing failed for a reason that is not the user's input (exit code 1)."""

    exit_code = 1


class Cancelled(GeorsError):
    """A run was cancelled (Ctrl-C, SIGTERM, a cancel request): what was committed stays valid.

    Attributes:
        summary: the run summary up to the cancellation (tiles saved...), or None.
    """

    exit_code = 130

    def __init__(self, message: str = "cancelled", summary=None):
        super().__init__(message)
        self.summary = summary


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise :class:`DependencyNotFoundError`.

    Args:
        module: importable module name, e.g. ``"segment_anything"``.
        extra: the geors pip extra that provides it, e.g. ``"sam"``.
        purpose: what the module is needed for, shown in the message.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # the package itself, never 'geors[extra]': pip would fetch PyPI's unrelated project named geors
        package = _PIP_NAMES.get(module, module.replace("_", "-"))
        raise DependencyNotFoundError(
            f"{purpose} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install {package}   (the '{extra}' extra of geors-gis)"
        ) from exc


_PIP_NAMES = {"segment_anything": "segment-anything", "distributed": "distributed"}
"""pip names of the optional modules :func:`require` imports."""
