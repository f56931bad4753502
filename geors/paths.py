"""Where geors keeps files, and how it fingerprints them: one rule for every module."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["ENV_CACHE", "cache_dir", "sha256_file"]

#: Environment variable overriding the cache root.
ENV_CACHE = "GEORS_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``$GEORS_CACHE_DIR`` (default ``~/.cache/geors``) joined with ``parts``; not created here."""
    root = os.environ.get(ENV_CACHE)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "geors"
    return base.joinpath(*parts)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a whole file, read in chunks (what run records and downloads check)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
