"""Scenes from what users type, opened and checked before anything is written."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from geors.errors import GeorsError, SceneReadError
from geors.raster import Scene, open_scene

log = logging.getLogger(__name__)

__all__ = ["RASTER_SUFFIXES", "FINGERPRINT_VERSION", "expand_inputs", "scene_files", "scene_fingerprint",
           "open_scenes"]

#: Recorded with each fingerprint: 2 = every byte of every file of the scene (1, unrecorded: 64 KiB).
FINGERPRINT_VERSION = 2

#: File suffixes taken as rasters when a folder is searched.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png")


def expand_inputs(items: Iterable[str | os.PathLike | Scene]) -> tuple[list[str | Scene], list[dict]]:
    """Scene paths from what users type: files, folders (searched recursively for rasters), quoted globs,
    VRT mosaics (opened as one scene) and text files listing paths (``.txt``/``.lst`` or ``@list``).

    Returns:
        ``(scenes, problems)``: paths (or :class:`Scene` objects passed through) in order without
        duplicates, and ``{"path", "reason"}`` for inputs that matched nothing.
    """
    out: list[str | Scene] = []
    problems: list[dict] = []
    for item in items:
        if isinstance(item, Scene):
            out.append(item)
            continue
        s = str(item)
        p = Path(s[1:] if s.startswith("@") else s).expanduser()
        if s.startswith("@") or (p.is_file() and p.suffix.lower() in (".txt", ".lst")):
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                problems.append({"path": s, "reason": f"cannot read the list file: {exc.strerror}"})
                continue
            listed = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
            if not listed:
                problems.append({"path": s, "reason": "the list file names no scene (only comments or blank "
                                                      "lines); put one raster path per line"})
                continue
            sub, sub_problems = expand_inputs(str(p.parent / x) if not Path(x).is_absolute() else x
                                              for x in listed)
            out.extend(sub)
            problems.extend(sub_problems)
        elif p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES
                           and not f.name.startswith("."))
            if not found:
                problems.append({"path": s, "reason": f"folder holds no raster ({', '.join(RASTER_SUFFIXES)})"})
            out.extend(found)
        elif not p.exists() and any(c in s for c in "*?["):
            found = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not found:
                problems.append({"path": s, "reason": "no file matches this pattern"})
            out.extend(f for f in found if Path(f).is_file())
        else:
            out.append(s)
    seen: set = set()
    unique = []
    for x in out:
        key = x if isinstance(x, Scene) else os.path.abspath(x)
        if key not in seen:
            seen.add(key)
            unique.append(x)
    return unique, problems


def scene_files(scene: Scene) -> list[Path]:
    """The files a scene's pixels come from: the raster itself and, for a VRT or a format with side files,
    every file GDAL reads (sources, overviews, world files), without GDAL's own ``.aux.xml`` caches."""
    import rasterio

    files: list[Path] = []
    try:
        with rasterio.open(scene.path) as ds:
            files = [Path(f) for f in (ds.files or [])]
    except Exception:  # noqa: BLE001 - a path GDAL opened before; the scene's own path is hashed anyway
        pass
    own = Path(scene.path)
    out = [own] + [f for f in files if f != own and not f.name.lower().endswith(".aux.xml")]
    return list(dict.fromkeys(out))


def scene_fingerprint(scene: Scene) -> str:
    """Identity of a scene's content for ``--resume``: grid, CRS, band count, dtype, nodata and the SHA-256 of
    every byte of every file its pixels come from (:func:`scene_files`).

    A raster changed anywhere gets another fingerprint, however much of it stays the same; a copy of the
    same file (other path or mtime) keeps its fingerprint. The cost is one streamed read: SHA-256 runs at
    ~1.7 GB/s on one core of the development machine, a 20,000 px RGB GeoTIFF (1.2 GB) took
    about 1 s from the page cache (docs/architecture.md, "Resume and refusal rules").
    """
    h = hashlib.sha256()
    # the bands geors reads are an option (--bands, a resume key named as such), not the raster's identity
    h.update(json.dumps([scene.width, scene.height, list(scene.transform)[:6], scene.crs.to_wkt() if scene.crs
                         else "", scene.count, str(scene.dtype), scene.nodata], default=str).encode())
    for i, f in enumerate(scene_files(scene)):
        try:
            with open(f, "rb") as fh:
                h.update(f"{i}:{os.fstat(fh.fileno()).st_size}:".encode())
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            if f == Path(scene.path) and Path(scene.path).exists():
                raise SceneReadError(f"{f}: cannot be read to fingerprint the scene: {exc.strerror}") from None
            h.update(f"{i}:unreadable:".encode())
    return h.hexdigest()[:32]


def open_scenes(items, bands, strict: bool) -> tuple[list[Scene], list[dict]]:
    """Open, validate and estimate the stretch of every scene (this reads pixels: a truncated file fails
    here, before any output exists). Returns the scenes and ``{"path", "reason"}`` for those skipped;
    with ``strict`` the first problem raises instead."""
    paths, problems = expand_inputs(items)
    if problems and strict:
        raise SceneReadError(f"{problems[0]['path']}: {problems[0]['reason']}")
    opened: list[Scene] = []
    for item in paths:
        try:
            scene = item if isinstance(item, Scene) else open_scene(item, bands=list(bands) if bands else None)
            _ = scene.stats  # the scene-wide stretch reads pixels: a truncated file fails here, not mid-run
            opened.append(scene)
        except GeorsError as exc:
            if strict:
                raise
            path = str(getattr(item, "path", item))
            reason = str(exc)
            reason = reason[len(path) + 2:] if reason.startswith(f"{path}: ") else reason  # said once
            problems.append({"path": path, "reason": reason})
            log.error("skipping %s", exc)
    return opened, problems
