"""GeoPackage output: layers of the output contract, the tile ledger, runs.

Layers are created through GDAL (pyogrio), so the file is a standard
GeoPackage with the scene CRS registered exactly (also custom WKT without an
EPSG code) and GDAL's R-tree spatial index. Rows are then inserted with
SQLite directly, because a GeoPackage is an SQLite database and only that lets
one transaction span several layers: a batch of tiles' detections, instances,
segmentation polygons *and* their ledger rows are committed together or not
at all. GDAL's R-tree triggers call ``ST_MinX``/``ST_IsEmpty``...; we register
those few functions on our connection so the index stays correct.

An existing file is checked before anything is written (a GeoPackage? layers
with compatible fields and geometry?) and only ever appended to.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Geod, Transformer

from geors.errors import OutputError
from geors.results import TileResult

log = logging.getLogger(__name__)

__all__ = [
    "LAYERS",
    "LayerSchema",
    "GeoPackageWriter",
    "gpkg_blob",
    "areas_m2",
    "pixel_box_to_polygon",
    "new_run_id",
]


@dataclass(frozen=True)
class LayerSchema:
    """Geometry type (None for an attribute table) and fields ``(name, kind)``; kind in str/int/float."""

    geometry: str | None
    fields: tuple[tuple[str, str], ...]


LAYERS: dict[str, LayerSchema] = {
    "detections": LayerSchema("Polygon", (
        ("class", "str"), ("class_id", "int"), ("score", "float"), ("gate_score", "float"),
        ("tile_id", "str"), ("scene", "str"), ("model", "str"), ("run_id", "str"))),
    "instances": LayerSchema("MultiPolygon", (
        ("detection_fid", "int"), ("class", "str"), ("class_id", "int"), ("score", "float"),
        ("mask_score", "float"), ("area_m2", "float"), ("mask_method", "str"), ("tile_id", "str"),
        ("scene", "str"), ("run_id", "str"))),
    "segmentation": LayerSchema("MultiPolygon", (
        ("class", "str"), ("class_id", "int"), ("area_m2", "float"), ("tile_id", "str"),
        ("scene", "str"), ("run_id", "str"))),
    "tiles": LayerSchema("Polygon", (
        ("scene", "str"), ("tile_id", "str"), ("row", "int"), ("col", "int"), ("col_off", "int"),
        ("row_off", "int"), ("width", "int"), ("height", "int"), ("nodata_fraction", "float"),
        ("mean_brightness", "float"), ("run_id", "str"))),
    "tile_cores": LayerSchema("Polygon", (
        ("scene", "str"), ("tile_id", "str"), ("row", "int"), ("col", "int"), ("col_off", "int"),
        ("row_off", "int"), ("width", "int"), ("height", "int"), ("run_id", "str"))),
    "geors_tiles": LayerSchema(None, (
        ("scene", "str"), ("tile_id", "str"), ("col_off", "int"), ("row_off", "int"), ("width", "int"),
        ("height", "int"), ("status", "str"), ("gate_score", "float"), ("n_detections", "int"),
        ("n_instances", "int"), ("n_segments", "int"), ("seconds", "float"), ("run_id", "str"),
        ("message", "str"))),
    "geors_runs": LayerSchema(None, (
        ("run_id", "str"), ("geors_version", "str"), ("command", "str"), ("config", "str"),
        ("models", "str"), ("started", "str"), ("finished", "str"), ("status", "str"))),
}

_SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL"}
_COMPATIBLE = {"str": {"TEXT"}, "int": {"INTEGER", "MEDIUMINT", "SMALLINT", "TINYINT", "INT", "BIGINT"},
               "float": {"REAL", "DOUBLE", "FLOAT"}}
_GEOM_COMPAT = {"Polygon": {"POLYGON", "MULTIPOLYGON", "GEOMETRY"},
                "MultiPolygon": {"MULTIPOLYGON", "GEOMETRY"}}


def new_run_id() -> str:
    """A sortable unique run id: UTC timestamp + random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- geometry blobs
def gpkg_blob(geom, srs_id: int) -> bytes | None:
    """GeoPackage binary geometry: ``GP`` header (little-endian, XY envelope) + WKB."""
    if geom is None:
        return None
    if shapely.is_empty(geom):
        return b"GP\x00" + bytes([0x01 | 0x10]) + struct.pack("<i", srs_id) + shapely.to_wkb(geom, byte_order=1)
    minx, miny, maxx, maxy = shapely.bounds(geom)
    header = b"GP\x00" + bytes([0x01 | 0x02]) + struct.pack("<i4d", srs_id, minx, maxx, miny, maxy)
    return header + shapely.to_wkb(geom, byte_order=1)


def _blob_envelope(blob: bytes) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) from a GeoPackage blob, None if empty."""
    if blob is None or len(blob) < 8:
        return None
    flags = blob[3]
    if flags & 0x10:
        return None
    endian = "<" if flags & 0x01 else ">"
    env = (flags >> 1) & 0x07
    if env >= 1:
        return struct.unpack(endian + "4d", blob[8:40])
    sizes = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}
    geom = shapely.from_wkb(blob[8 + sizes.get(env, 0):])
    if geom.is_empty:
        return None
    minx, miny, maxx, maxy = geom.bounds
    return (minx, maxx, miny, maxy)


def _register_st_functions(con: sqlite3.Connection) -> None:
    def env(i):
        def f(blob):
            e = _blob_envelope(blob)
            return None if e is None else e[i]
        return f

    con.create_function("ST_MinX", 1, env(0), deterministic=True)
    con.create_function("ST_MaxX", 1, env(1), deterministic=True)
    con.create_function("ST_MinY", 1, env(2), deterministic=True)
    con.create_function("ST_MaxY", 1, env(3), deterministic=True)
    con.create_function("ST_IsEmpty", 1, lambda b: 1 if _blob_envelope(b) is None else 0, deterministic=True)
    con.create_function("GPKG_IsAssignable", 2, lambda a, b: 1, deterministic=True)


# ---------------------------------------------------------------- geometry helpers
def pixel_box_to_polygon(box_xyxy: Sequence[float], transform) -> shapely.Polygon:
    """A pixel box (xmin, ymin, xmax, ymax; x = column) as a polygon in CRS units."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    corners = [transform @ (x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    return shapely.Polygon(corners)


def areas_m2(geoms: Sequence, crs) -> np.ndarray:
    """Areas in square metres: planar for projected CRS (unit-scaled), geodesic for geographic."""
    if len(geoms) == 0:
        return np.zeros(0)
    pcrs = ProjCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if pcrs.is_geographic:
        geod = Geod(ellps="WGS84") if pcrs.ellipsoid is None else Geod(
            a=pcrs.ellipsoid.semi_major_metre, rf=pcrs.ellipsoid.inverse_flattening or 0.0)
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) if g is not None else 0.0 for g in geoms])
    unit = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
    return shapely.area(np.asarray(geoms, dtype=object)) * unit * unit


def _to_multi(geom):
    if geom is None or isinstance(geom, shapely.MultiPolygon):
        return geom
    if isinstance(geom, shapely.Polygon):
        return shapely.MultiPolygon([geom])
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, shapely.Polygon | shapely.MultiPolygon)]
    parts = []
    for p in polys:
        parts.extend(p.geoms if isinstance(p, shapely.MultiPolygon) else [p])
    return shapely.MultiPolygon(parts)


# ---------------------------------------------------------------- writer
class GeoPackageWriter:
    """Appends results to a GeoPackage, one transaction per batch of tiles.

    Args:
        path: output ``.gpkg``; its directory must exist.
        crs: CRS of the data written (rasterio or pyproj CRS, or WKT). New layers
            take it; existing layers keep theirs and geometries are reprojected.
        layers: layer names from :data:`LAYERS` this writer will fill; the
            ``geors_tiles`` ledger and ``geors_runs`` table are always included.
        run_id: id recorded in every row (default: a new one).

    Raises:
        OutputError: directory missing, the file is not a GeoPackage, or a layer
            exists with an incompatible schema. Raised before anything is written.
    """

    def __init__(self, path: str | os.PathLike, crs, layers: Iterable[str] = ("detections",),
                 run_id: str | None = None):
        self.path = Path(path)
        self.crs_wkt = crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)
        self.crs = ProjCRS.from_user_input(self.crs_wkt)
        self.layers = list(dict.fromkeys([*layers, "geors_tiles", "geors_runs"]))
        unknown = [n for n in self.layers if n not in LAYERS]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; known: {sorted(LAYERS)}")
        self.run_id = run_id or new_run_id()
        self._check_destination()
        self._existing = self._inspect_existing()
        self._create_missing_layers()
        self._con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        _register_st_functions(self._con)
        self._layer_srs: dict[str, int] = {}
        self._layer_transformer: dict[str, Transformer | None] = {}
        for name in self.layers:
            if LAYERS[name].geometry:
                srs_id, wkt = self._con.execute(
                    "SELECT g.srs_id, s.definition FROM gpkg_geometry_columns g JOIN gpkg_spatial_ref_sys s "
                    "ON g.srs_id = s.srs_id WHERE lower(g.table_name) = lower(?)", (name,)).fetchone()
                self._layer_srs[name] = srs_id
                layer_crs = ProjCRS.from_user_input(wkt) if wkt and wkt != "undefined" else self.crs
                if layer_crs.equals(self.crs, ignore_axis_order=True):
                    self._layer_transformer[name] = None
                else:
                    log.warning("%s: layer %s is in %s; reprojecting from %s", self.path, name,
                                layer_crs.name, self.crs.name)
                    self._layer_transformer[name] = Transformer.from_crs(self.crs, layer_crs, always_xy=True)

    # -- checks -----------------------------------------------------------------
    def _check_destination(self) -> None:
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.exists():
            raise OutputError(f"{self.path}: the output directory {parent} does not exist. Create it first "
                              f"(mkdir -p {parent}) or choose another path.")
        if self.path.suffix.lower() != ".gpkg":
            raise OutputError(f"{self.path}: output must be a GeoPackage file ending in .gpkg.")
        if self.path.exists():
            if self.path.is_dir():
                raise OutputError(f"{self.path}: is a directory; give a .gpkg file path.")
            try:
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                try:
                    con.execute("SELECT count(*) FROM gpkg_contents").fetchone()
                finally:
                    con.close()
            except sqlite3.DatabaseError:
                raise OutputError(f"{self.path}: exists but is not a GeoPackage (or is corrupt). geors does not "
                                  "overwrite it; choose another output name.") from None

    def _inspect_existing(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            found = {}
            for (name,) in con.execute("SELECT table_name FROM gpkg_contents").fetchall():
                if name.lower() not in {n.lower() for n in self.layers}:
                    continue
                cols = {r[1].lower(): (r[2] or "").upper() for r in con.execute(f'PRAGMA table_info("{name}")')}
                gt = con.execute("SELECT geometry_type_name FROM gpkg_geometry_columns WHERE lower(table_name)"
                                 " = lower(?)", (name,)).fetchone()
                found[name.lower()] = {"columns": cols, "geometry": gt[0].upper() if gt else None}
        finally:
            con.close()
        for name, info in found.items():
            schema = LAYERS[name]
            problems = []
            if schema.geometry and (info["geometry"] not in _GEOM_COMPAT[schema.geometry]):
                problems.append(f"geometry {info['geometry']} (need {schema.geometry})")
            if not schema.geometry and info["geometry"]:
                problems.append(f"has geometry {info['geometry']} (need a plain table)")
            for fname, kind in schema.fields:
                have = info["columns"].get(fname)
                if have is None:
                    problems.append(f"field '{fname}' missing")
                elif have.split("(")[0] not in _COMPATIBLE[kind]:
                    problems.append(f"field '{fname}' is {have} (need {_SQL_TYPES[kind]})")
            if problems:
                raise OutputError(
                    f"{self.path}: existing layer '{name}' has an incompatible schema: {'; '.join(problems)}. "
                    "geors leaves the file untouched; write to a new .gpkg or remove that layer.")
        return found

    def _create_missing_layers(self) -> None:
        import geopandas as gpd
        import pandas as pd
        import pyogrio

        dtypes = {"str": str, "int": "int64", "float": "float64"}
        for name in self.layers:
            if name.lower() in self._existing:
                continue
            schema = LAYERS[name]
            cols = {f: pd.Series([], dtype=dtypes[k]) for f, k in schema.fields}
            try:
                if schema.geometry:
                    df = gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=self.crs_wkt))
                    pyogrio.write_dataframe(df, self.path, layer=name, driver="GPKG",
                                            geometry_type=schema.geometry)
                else:
                    pyogrio.write_dataframe(pd.DataFrame(cols), self.path, layer=name, driver="GPKG")
            except Exception as exc:  # GDAL errors come in several classes
                raise OutputError(f"{self.path}: cannot create layer '{name}': {exc}") from exc

    # -- writing ----------------------------------------------------------------
    def _insert(self, layer: str, rows: list[dict], geoms: list | None) -> list[int]:
        schema = LAYERS[layer]
        names = [f for f, _ in schema.fields]
        cols = ['"geom"'] if schema.geometry else []
        cols += [f'"{n}"' for n in names]
        sql = f'INSERT INTO "{layer}" ({", ".join(cols)}) VALUES ({", ".join("?" * len(cols))})'
        fids = []
        tr = self._layer_transformer.get(layer)
        for i, row in enumerate(rows):
            values = [row.get(n) for n in names]
            if schema.geometry:
                g = geoms[i]
                if tr is not None and g is not None:
                    g = shapely.transform(g, lambda xy, tr=tr: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
                if schema.geometry == "MultiPolygon":
                    g = _to_multi(g)
                values = [gpkg_blob(g, self._layer_srs[layer]), *values]
                if g is not None and not shapely.is_empty(g):
                    self._extent_update(layer, shapely.bounds(g))
            cur = self._con.execute(sql, values)
            fids.append(cur.lastrowid)
        return fids

    def _extent_update(self, layer: str, b) -> None:
        e = self._extents.get(layer)
        self._extents[layer] = tuple(b) if e is None else (
            min(e[0], b[0]), min(e[1], b[1]), max(e[2], b[2]), max(e[3], b[3]))

    def _flush_extents(self) -> None:
        for layer, (x0, y0, x1, y1) in self._extents.items():
            self._con.execute(
                "UPDATE gpkg_contents SET min_x = min(coalesce(min_x, ?), ?), min_y = min(coalesce(min_y, ?), ?),"
                " max_x = max(coalesce(max_x, ?), ?), max_y = max(coalesce(max_y, ?), ?),"
                " last_change = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE lower(table_name) = lower(?)",
                (x0, x0, y0, y0, x1, x1, y1, y1, layer))

    def transaction(self):
        """Context manager: one SQLite transaction (BEGIN IMMEDIATE ... COMMIT/ROLLBACK)."""
        writer = self

        class _Tx:
            def __enter__(self_inner):
                writer._extents = {}
                writer._con.execute("BEGIN IMMEDIATE")
                return writer

            def __exit__(self_inner, et, ev, tb):
                if et is None:
                    writer._flush_extents()
                    writer._con.execute("COMMIT")
                else:
                    writer._con.execute("ROLLBACK")
                return False

        return _Tx()

    def write_results(self, results: Sequence[TileResult], model: str = "") -> None:
        """Write a batch of tiles: their features and ledger rows in one transaction."""
        with self.transaction():
            for res in results:
                self._write_one(res, model)

    def _write_one(self, res: TileResult, model: str) -> None:
        for layer, items in (("detections", res.detections), ("instances", res.instances),
                             ("segmentation", res.segmentation)):
            if items and layer not in self.layers:
                raise ValueError(f"tile {res.tile_id} has {layer} but this writer was opened for {self.layers}")
        common = {"tile_id": res.tile_id, "scene": res.scene, "run_id": self.run_id}
        det_fids: list[int] = []
        if res.detections:
            rows = [{**common, "class": d.class_name, "class_id": int(d.class_id), "score": float(d.score),
                     "gate_score": None if d.gate_score is None else float(d.gate_score), "model": model}
                    for d in res.detections]
            det_fids = self._insert("detections", rows, [d.geometry for d in res.detections])
        if res.instances:
            areas = areas_m2([i.geometry for i in res.instances], self.crs)
            rows = []
            for inst, area in zip(res.instances, areas, strict=True):
                fid = det_fids[inst.detection_index] if inst.detection_index is not None and det_fids else None
                rows.append({**common, "detection_fid": fid, "class": inst.class_name,
                             "class_id": inst.class_id, "score": float(inst.score),
                             "mask_score": None if inst.mask_score is None else float(inst.mask_score),
                             "area_m2": float(area), "mask_method": inst.mask_method})
            self._insert("instances", rows, [i.geometry for i in res.instances])
        if res.segmentation:
            areas = areas_m2([s.geometry for s in res.segmentation], self.crs)
            rows = [{**common, "class": s.class_name, "class_id": int(s.class_id), "area_m2": float(a)}
                    for s, a in zip(res.segmentation, areas, strict=True)]
            self._insert("segmentation", rows, [s.geometry for s in res.segmentation])
        w = res.window
        ledger = {**common, "col_off": int(w.col_off), "row_off": int(w.row_off), "width": int(w.width),
                  "height": int(w.height), "status": res.status,
                  "gate_score": None if res.gate_score is None else float(res.gate_score),
                  "n_detections": len(res.detections), "n_instances": len(res.instances),
                  "n_segments": len(res.segmentation), "seconds": float(res.seconds), "message": res.message}
        self._insert("geors_tiles", [ledger], None)

    def write_features(self, layer: str, rows: list[dict], geoms: list) -> list[int]:
        """Write plain rows to any layer of :data:`LAYERS` in one transaction; returns fids."""
        with self.transaction():
            return self._insert(layer, [{"run_id": self.run_id, **r} for r in rows], geoms)

    # -- runs and resume ----------------------------------------------------------
    def start_run(self, command: str, config: dict, models: dict | None = None) -> None:
        """Record the run (version, full config as JSON, model names and sha256)."""
        from geors import __version__

        with self.transaction():
            self._insert("geors_runs", [{"run_id": self.run_id, "geors_version": __version__, "command": command,
                                         "config": json.dumps(config, default=str, sort_keys=True),
                                         "models": json.dumps(models or {}, default=str, sort_keys=True),
                                         "started": _now(), "finished": None, "status": "running"}], None)

    def finish_run(self, status: str = "finished") -> None:
        with self.transaction():
            self._con.execute('UPDATE "geors_runs" SET finished = ?, status = ? WHERE run_id = ?',
                              (_now(), status, self.run_id))

    def finished_tiles(self, scene: str) -> dict[str, tuple[int, int, int, int]]:
        """Tiles of ``scene`` already committed (any run): tile_id -> window, for ``--resume``."""
        rows = self._con.execute(
            'SELECT tile_id, col_off, row_off, width, height FROM "geors_tiles" WHERE scene = ? '
            "AND status != 'failed'", (scene,)).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def close(self) -> None:
        if getattr(self, "_con", None) is not None:
            self._con.close()
            self._con = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
