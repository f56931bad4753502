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

__all__ = ["RASTER_SUFFIXES", "expand_inputs", "scene_fingerprint", "open_scenes"]

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


def scene_fingerprint(scene: Scene) -> str:
    """Identity of a scene's content for ``--resume``: grid, CRS, bands, dtype, file size and header bytes.

    Two different rasters with the same file name get different fingerprints; a
    copy of the same file (other path or mtime) keeps its fingerprint.
    """
    h = hashlib.sha256()
    p = Path(scene.path)
    h.update(json.dumps([scene.width, scene.height, list(scene.transform)[:6], scene.crs.to_wkt() if scene.crs
                         else "", list(scene.band_indexes), str(scene.dtype)], default=str).encode())
    try:
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 16))
    except OSError:
        pass
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
            problems.append({"path": str(getattr(item, "path", item)), "reason": str(exc)})
            log.error("skipping %s", exc)
    return opened, problems
