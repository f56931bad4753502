"""Reading the trials' GeoPackages: rows, row differences, comparison with an uninterrupted run, validity.

Rows are compared as multisets over every layer (``gpkg_contents``) except ``geors_runs``, without ``fid``,
``run_id`` and the ledger's ``seconds`` and ``message``; ``instances.detection_fid`` is replaced by the
detection it points at (scene, tile, geometry), since fids depend on the commit order.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from pathlib import Path


def sha256(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_dir():
        return "dir"
    return hashlib.sha256(path.read_bytes()).hexdigest()


_SKIP_COLS = {"fid", "run_id", "seconds", "message"}


def _canon(v):
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, bytes):
        return v.hex()
    return v


def rows(path: Path) -> dict[str, Counter]:
    """Every layer's rows as a multiset (see the module docstring for what is left out)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents ORDER BY table_name")]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "geors_tiles" in tables and "geors_tiles" not in names:
            names.append("geors_tiles")
        det_key = {}
        if "detections" in names:
            cols = [r[1] for r in con.execute('PRAGMA table_info("detections")')]
            if {"fid", "scene", "tile_id", "geom"} <= set(cols):
                for fid, scene, tile, geom in con.execute('SELECT fid, scene, tile_id, geom FROM "detections"'):
                    det_key[fid] = (scene, tile, _canon(geom))
        out = {}
        for name in names:
            if name == "geors_runs":
                continue
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')]
            keep = [c for c in cols if c not in _SKIP_COLS]
            data = Counter()
            for row in con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in keep)} FROM "{name}"'):
                d = dict(zip(keep, row, strict=True))
                if name == "instances" and d.get("detection_fid") is not None:
                    d["detection_fid"] = det_key.get(d["detection_fid"], ("missing", d["detection_fid"]))
                data[tuple(sorted((k, _canon(v)) for k, v in d.items()))] += 1
            out[name] = data
        return out
    finally:
        con.close()


def rows_or_error(path: Path):
    try:
        return rows(path)
    except Exception as exc:  # noqa: BLE001 - a measurement: any failure to read is a finding
        return f"unreadable: {type(exc).__name__}: {exc}"


def diff_rows(a, b) -> str:
    """'' when equal, else a short account per layer."""
    if isinstance(a, str) or isinstance(b, str):
        return f"cannot compare ({a if isinstance(a, str) else b})"
    parts = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name, Counter()), b.get(name, Counter())
        if x != y:
            parts.append(f"{name}: {sum(x.values())} rows vs {sum(y.values())} expected "
                         f"({sum((x - y).values())} extra, {sum((y - x).values())} missing)")
    return "; ".join(parts)


def _geometry(blob):
    """A GeoPackage geometry blob as shapely (header: 8 bytes + the envelope its flags declare)."""
    import shapely

    if blob is None:
        return None
    env = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(blob[3] >> 1) & 0b111]
    return shapely.from_wkb(bytes(blob[8 + env:]))


def _raw(path: Path) -> dict[str, list[tuple]]:
    """Per layer: (exact part, floats, geometry) of each row; detection_fid only says whether it points at a
    detection of the same scene and tile (the fids themselves depend on the commit order)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents")]
        names += ["geors_tiles"] if "geors_tiles" not in names else []
        dets = {}
        if "detections" in names:
            dets = {f: (sc, t) for f, sc, t in con.execute("SELECT fid, scene, tile_id FROM detections")}
        out = {}
        for name in names:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')]
            keep = [c for c in cols if c not in _SKIP_COLS]
            rows_ = []
            for row in con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in keep)} FROM "{name}"'):
                d = dict(zip(keep, row, strict=True))
                if name == "instances" and d.get("detection_fid") is not None:
                    d["detection_fid"] = "ok" if dets.get(d["detection_fid"]) == (d.get("scene"), d.get(
                        "tile_id")) else "dangling"
                geom = d.pop("geom", None)
                floats = tuple(sorted((k, v) for k, v in d.items() if isinstance(v, float)))
                exact = tuple(sorted((k, v) for k, v in d.items() if not isinstance(v, float)))
                rows_.append((exact, floats, geom))
            out[name] = rows_
        return out
    finally:
        con.close()


def close_diff(path: Path, ref: Path, ftol: float = 1e-5, gtol: float = 1e-3) -> tuple[str, float, float]:
    """('' or what differs, largest float difference, largest coordinate difference) between two outputs'
    rows, floats within ``ftol`` and coordinates within ``gtol`` CRS units (float32 noise of other batch
    shapes is ~1e-7 and ~1e-6 m)."""
    import numpy as np
    import shapely

    a, b = _raw(path), _raw(ref)
    parts, fmax, gmax = [], 0.0, 0.0
    for name in sorted(set(a) | set(b)):
        if name == "geors_runs":
            continue
        ga, gb = {}, {}
        for g, rs in ((ga, a.get(name, [])), (gb, b.get(name, []))):
            for exact, floats, geom in rs:
                g.setdefault(exact, []).append((floats, geom))
        bad = 0
        for key in set(ga) | set(gb):
            xs, ys = ga.get(key, []), gb.get(key, [])
            if len(xs) != len(ys):
                bad += abs(len(xs) - len(ys)) or 1
                continue
            xs.sort(key=lambda r: tuple(v for _, v in r[0]))
            ys.sort(key=lambda r: tuple(v for _, v in r[0]))
            for (fx, gx), (fy, gy) in zip(xs, ys, strict=True):
                if [k for k, _ in fx] != [k for k, _ in fy]:
                    bad += 1
                    continue
                df = max((abs(u - v) for (_, u), (_, v) in zip(fx, fy, strict=True)), default=0.0)
                fmax = max(fmax, df)
                dg = 0.0
                if (gx is None) != (gy is None):
                    dg = float("inf")
                elif gx is not None and gx != gy:
                    cx, cy = shapely.get_coordinates(_geometry(gx)), shapely.get_coordinates(_geometry(gy))
                    dg = float(np.abs(cx - cy).max()) if cx.shape == cy.shape else float("inf")
                gmax = max(gmax, dg)
                if df > ftol or dg > gtol:
                    bad += 1
        if bad:
            parts.append(f"{name}: {len(a.get(name, []))} rows vs {len(b.get(name, []))} expected, {bad} differ "
                         f"beyond {ftol:g} / {gtol:g} m")
    return "; ".join(parts), fmax, gmax


def compare_to_reference(path: Path, ref: Path, ref_rows: dict) -> tuple[str, str]:
    """(failure or '', note): identical rows pass; rows within float32 noise pass with a note."""
    exact = diff_rows(rows_or_error(path), ref_rows)
    if not exact:
        return "", ""
    try:
        d, fmax, gmax = close_diff(path, ref)
    except Exception as exc:  # noqa: BLE001
        return f"rows differ from an uninterrupted run ({exact}); unreadable: {exc}", ""
    if d:
        return f"rows differ from an uninterrupted run: {d} (exactly: {exact})", ""
    return "", f"not bitwise identical, within noise (max float diff {fmax:.2g}, max coordinate diff {gmax:.2g})"


def run_statuses(path: Path) -> list[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT status FROM geors_runs ORDER BY fid")]
    finally:
        con.close()


def gpkg_valid(path: Path) -> str:
    """'' when SQLite finds no damage and pyogrio reads every layer, else what failed."""
    if not path.exists():
        return "no file"
    try:
        con = sqlite3.connect(path, timeout=30)  # read-write: a hot journal is rolled back, as SQLite intends
        try:
            check = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
        if check != [("ok",)]:
            return f"integrity_check: {check[:3]}"
        import pyogrio

        for name, _ in pyogrio.list_layers(path):
            pyogrio.read_dataframe(path, layer=name)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return ""
