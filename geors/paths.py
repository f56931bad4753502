"""Where geors keeps files, and how it fingerprints them: one rule for every module."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["ENV_CACHE", "cache_dir", "sha256_file", "check_outputs_not_inputs"]

#: Environment variable overriding the cache root.
ENV_CACHE = "GEORS_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``$GEORS_CACHE_DIR`` (default ``~/.cache/geors``) joined with ``parts``; not created here."""
    root = os.environ.get(ENV_CACHE)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "geors"
    return base.joinpath(*parts)


_DIGESTS: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a whole file, read in chunks (what run records and downloads check).

    Remembered per process for the same file (device, inode, size, modification time in ns): a run checks
    a 2.4 GiB SAM checkpoint when it loads it and records its sha256, and hashes it once."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _DIGESTS:
            return _DIGESTS[key]
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    digest = h.hexdigest()
    if key == _stat_key(path):  # unchanged while it was read
        _DIGESTS[key] = digest
    return digest


def _stat_key(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


PathsByOption = Mapping[str, "str | os.PathLike | Iterable[str | os.PathLike] | None"]


def _by_option(paths: PathsByOption) -> list[tuple[str, Path]]:
    out = []
    for option, value in paths.items():
        if value is None or value == "":
            continue
        values = [value] if isinstance(value, str | os.PathLike) else list(value)
        out.extend((option, Path(os.fspath(v)).expanduser()) for v in values if v is not None and str(v) != "")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_outputs_not_inputs(outputs: PathsByOption, inputs: PathsByOption) -> None:
    """Refuse (exit 2), before anything is written, an output that is one of the command's inputs (compared
    as files: links and other spellings of the same path are caught) or two outputs that are one file.

    Every command that writes files calls this: ``{"-o": out}`` against e.g. ``{"--scene": [...],
    "--labels": [...]}``. Inputs that do not exist (a model *name*, an engine name) are left out.

    Raises:
        geors.errors.OutputError: naming both options and the file.
    """
    from geors.errors import OutputError

    outs = _by_option(outputs)
    ins = [(o, p) for o, p in _by_option(inputs) if p.exists()]
    for i, (out_opt, out) in enumerate(outs):
        for in_opt, inp in ins:
            if _same_file(out, inp):
                raise OutputError(f"{out}: {out_opt} is the same file as the {in_opt} input {inp}; geors never "
                                  "writes over one of its inputs. Choose another output name.")
        for other_opt, other in outs[i + 1:]:
            if _same_file(out, other):
                raise OutputError(f"{out}: given as both {out_opt} and {other_opt} ({other}); each output needs "
                                  "its own file.")
