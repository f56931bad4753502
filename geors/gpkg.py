"""The GeoPackage format as geors writes it: the output layers, geometry blobs, SQL functions, the file.

- :data:`LAYERS`: the output contract, one :class:`LayerSchema` per layer
  (detections, instances, segmentation, the tile grid, the ``geors_tiles``
  ledger and the ``geors_runs`` table); an existing file checked against it
  (:func:`needs_creation`: is it a GeoPackage at all; :func:`check_layers`,
  :func:`schema_problems`: do its layers fit; :func:`complete_header`).
- :func:`gpkg_blob` / :func:`gpkg_geometry`: the GeoPackage binary geometry
  (``GP`` header + WKB), written and read by geors through SQLite directly.
- :func:`register_st_functions`: the few SQL functions (``ST_MinX``,
  ``ST_IsEmpty``...) that GDAL's R-tree triggers call, on a plain ``sqlite3``
  connection, so the spatial index stays correct.
- :func:`create_layer` (through GDAL: exact CRS registration, R-tree index,
  feature-count triggers), :func:`read_tables` and :func:`read_layers`
  (what a file holds, read-only), :func:`recover_hot_journal` (a transaction
  that a killed process left half-done is rolled back before the file is read).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import shapely

from geors.errors import OutputError

log = logging.getLogger(__name__)

__all__ = ["LAYERS", "LayerSchema", "SQL_TYPES", "METADATA_TABLES", "GPKG_VERSION", "schema_problems", "gpkg_blob",
           "gpkg_geometry", "encode_geometries", "register_st_functions", "recover_hot_journal", "read_tables", "read_layers", "create_layer",
           "needs_creation", "complete_header", "check_layers", "layer_srs", "widen_extent"]


@dataclass(frozen=True)
class LayerSchema:
    """Geometry type (None for an attribute table) and fields ``(name, kind)``; kind in str/int/float.

    ``added`` names fields introduced after files were already written: an
    existing layer without them is accepted and gets the columns added.
    """

    geometry: str | None
    fields: tuple[tuple[str, str], ...]
    added: tuple[str, ...] = ()


LAYERS: dict[str, LayerSchema] = {
    "detections": LayerSchema("Polygon", (
        ("class", "str"), ("class_id", "int"), ("score", "float"), ("gate_score", "float"),
        ("tile_id", "str"), ("scene", "str"), ("model", "str"), ("run_id", "str"), ("passes_threshold", "int")),
        added=("passes_threshold",)),
    "instances": LayerSchema("MultiPolygon", (
        ("detection_fid", "int"), ("class", "str"), ("class_id", "int"), ("score", "float"),
        ("mask_score", "float"), ("area_m2", "float"), ("mask_method", "str"), ("tile_id", "str"),
        ("scene", "str"), ("run_id", "str"), ("box_fid", "int"), ("box_attributes", "str")),
        added=("box_fid", "box_attributes")),
    "segmentation": LayerSchema("MultiPolygon", (
        ("class", "str"), ("class_id", "int"), ("area_m2", "float"), ("tile_id", "str"),
        ("scene", "str"), ("run_id", "str"), ("edge", "int")), added=("edge",)),
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
        ("models", "str"), ("started", "str"), ("finished", "str"), ("status", "str"),
        ("host", "str"), ("pid", "int")), added=("host", "pid")),
}

#: SQL column type of each field kind
SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL"}
_COMPATIBLE = {"str": {"TEXT"}, "int": {"INTEGER", "MEDIUMINT", "SMALLINT", "TINYINT", "INT", "BIGINT"},
               "float": {"REAL", "DOUBLE", "FLOAT"}}
_GEOM_COMPAT = {"Polygon": {"POLYGON", "MULTIPOLYGON", "GEOMETRY"},
                "MultiPolygon": {"MULTIPOLYGON", "GEOMETRY"}}

#: the tables every GeoPackage has
METADATA_TABLES = frozenset({"gpkg_contents", "gpkg_spatial_ref_sys", "gpkg_geometry_columns"})
#: ``PRAGMA application_id`` of a GeoPackage ("GPKG", "GP10", "GP11"), and the one geors sets
APPLICATION_IDS = frozenset({0x47504B47, 0x47503130, 0x47503131})
APPLICATION_ID = 0x47504B47
# New files are GeoPackage 1.2 (GDAL's VERSION creation option), not GDAL >= 3.8's default 1.4: the GDAL 3.6 of
# QGIS 3.22 LTR (Debian 12) warns "may only be partially supported" on every 1.4 file, and geors writes nothing
# that needs 1.3/1.4. Existing files keep their version.
GPKG_VERSION = "1.2"
USER_VERSION = 10200  # GPKG_VERSION as PRAGMA user_version (set when completing a headerless file)


def schema_problems(name: str, geometry: str | None, columns: dict[str, str]) -> list[str]:
    """How an existing layer differs from :data:`LAYERS` (empty when geors can append to it).

    Args:
        name: a layer of :data:`LAYERS`.
        geometry: the layer's geometry type name (upper case), None for a plain table.
        columns: column name (lower case) -> declared SQL type (upper case).
    """
    schema = LAYERS[name]
    problems = []
    if schema.geometry and (geometry not in _GEOM_COMPAT[schema.geometry]):
        problems.append(f"geometry {geometry} (need {schema.geometry})")
    if not schema.geometry and geometry:
        problems.append(f"has geometry {geometry} (need a plain table)")
    for fname, kind in schema.fields:
        have = columns.get(fname)
        if have is None:
            if fname not in schema.added:
                problems.append(f"field '{fname}' missing")
        elif have.split("(")[0] not in _COMPATIBLE[kind]:
            problems.append(f"field '{fname}' is {have} (need {SQL_TYPES[kind]})")
    return problems


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


_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


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
    geom = shapely.from_wkb(blob[8 + _ENVELOPE_BYTES.get(env, 0):])
    if geom.is_empty:
        return None
    minx, miny, maxx, maxy = geom.bounds
    return (minx, maxx, miny, maxy)


def gpkg_geometry(blob: bytes | None):
    """The shapely geometry of a GeoPackage binary geometry (None for NULL)."""
    if blob is None or len(blob) < 8:
        return None
    flags = blob[3]
    return shapely.from_wkb(bytes(blob[8 + _ENVELOPE_BYTES.get((flags >> 1) & 0x07, 0):]))


def _to_multi(geom):
    """A MultiPolygon of a polygon, or of the polygons of a collection (None stays None)."""
    if geom is None or isinstance(geom, shapely.MultiPolygon):
        return geom
    if isinstance(geom, shapely.Polygon):
        return shapely.MultiPolygon([geom])
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, shapely.Polygon | shapely.MultiPolygon)]
    parts = []
    for p in polys:
        parts.extend(p.geoms if isinstance(p, shapely.MultiPolygon) else [p])
    return shapely.MultiPolygon(parts)


def encode_geometries(layer: str, geoms, srs_id: int) -> tuple[list[bytes | None], tuple | None]:
    """Blobs of ``layer``'s geometry type (a MultiPolygon layer's polygons as MultiPolygons) and their
    envelope ``(minx, miny, maxx, maxy)``, None when every geometry is None or empty."""
    multi = LAYERS[layer].geometry == "MultiPolygon"
    blobs: list[bytes | None] = []
    env = None
    for g in geoms:
        if multi:
            g = _to_multi(g)
        blobs.append(gpkg_blob(g, srs_id))
        if g is not None and not shapely.is_empty(g):
            b = shapely.bounds(g)
            env = tuple(b) if env is None else (min(env[0], b[0]), min(env[1], b[1]), max(env[2], b[2]),
                                                 max(env[3], b[3]))
    return blobs, env


def register_st_functions(con: sqlite3.Connection) -> None:
    """The SQL functions GDAL's R-tree triggers call, on a plain ``sqlite3`` connection."""
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


# ---------------------------------------------------------------- the file
def recover_hot_journal(path: str | os.PathLike) -> bool:
    """Roll back a transaction that a killed process left half-done (SQLite's hot journal).

    SQLite rolls a hot journal back on the first read through a read-write
    connection; a read-only connection cannot, and reports the file as
    unreadable. Call this before opening an existing output read-only. Does
    nothing (and returns False) without a ``-journal``/``-wal`` file next to
    ``path``, or when the file cannot be opened for writing (the writer's own
    checks then say why).

    Returns:
        True when a leftover journal was found and a read-write read succeeded.
    """
    path = Path(path)
    if not path.is_file():
        return False
    leftovers = [p for p in (Path(f"{path}-journal"), Path(f"{path}-wal")) if p.exists()]
    if not leftovers or not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return False
    try:
        con = sqlite3.connect(path, timeout=60)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        log.warning("%s: could not recover %s: %s", path, leftovers[0].name, exc)
        return False
    log.info("%s: recovered an interrupted transaction (%s)", path, leftovers[0].name)
    return True


def read_tables(path: str | os.PathLike, timeout: float = 60.0) -> set[str]:
    """Lower-case names of an SQLite file's tables, read-only (``sqlite3.DatabaseError`` when it is none)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    try:
        return {r[0].lower() for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def read_layers(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, dict]:
    """The layers a GeoPackage lists in ``gpkg_contents`` (only ``names``, when given), read-only.

    Returns:
        lower-case layer name -> ``{"columns": {name: SQL type}, "geometry": type name or None}``
        (names lower case, types upper case), as :func:`schema_problems` takes them.

    Raises:
        sqlite3.DatabaseError: the file is not a GeoPackage.
    """
    wanted = None if names is None else {n.lower() for n in names}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        found = {}
        for (name,) in con.execute("SELECT table_name FROM gpkg_contents").fetchall():
            if wanted is not None and name.lower() not in wanted:
                continue
            cols = {r[1].lower(): (r[2] or "").upper() for r in con.execute(f'PRAGMA table_info("{name}")')}
            gt = con.execute("SELECT geometry_type_name FROM gpkg_geometry_columns WHERE lower(table_name)"
                             " = lower(?)", (name,)).fetchone()
            found[name.lower()] = {"columns": cols, "geometry": gt[0].upper() if gt else None}
        return found
    finally:
        con.close()


def create_layer(target: Path, name: str, crs_wkt: str, wait_s: float = 60.0) -> None:
    """Create the empty layer ``name`` of :data:`LAYERS` through GDAL (a new file is GeoPackage
    :data:`GPKG_VERSION`), waiting up to ``wait_s`` while another process holds the file's write lock.

    Raises:
        Exception: GDAL's error (several classes), for the caller to word.
    """
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    dtypes = {"str": str, "int": "int64", "float": "float64"}
    schema = LAYERS[name]
    cols = {f: pd.Series([], dtype=dtypes[k]) for f, k in schema.fields}
    if schema.geometry:
        df = gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=crs_wkt))
        kwargs = {"geometry_type": schema.geometry}
    else:
        df, kwargs = pd.DataFrame(cols), {}
    deadline = time.monotonic() + wait_s
    while True:
        try:
            new = {} if target.exists() else {"dataset_options": {"VERSION": GPKG_VERSION}}
            pyogrio.write_dataframe(df, target, layer=name, driver="GPKG", **kwargs, **new)
            return
        except Exception as exc:  # GDAL errors come in several classes
            if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def needs_creation(path: Path) -> bool:
    """True when there is no file, or one that holds nothing (0 bytes, or SQLite without tables).

    Such a file is what an interrupted creation by an older geors leaves; it
    is replaced by a complete GeoPackage. Anything else that is not a
    GeoPackage is refused.

    Raises:
        OutputError: the file is not a GeoPackage (saying what it holds).
    """
    if not path.exists():
        return True
    if path.stat().st_size == 0:
        log.warning("%s: empty file (an interrupted creation?): creating the GeoPackage in its place", path)
        return True
    try:
        tables = read_tables(path)
    except sqlite3.DatabaseError:
        raise OutputError(f"{path}: exists but is not a GeoPackage (or is corrupt). geors does not "
                          "overwrite it: delete it if it is yours and unneeded, or choose another output "
                          "name.") from None
    if not tables:
        log.warning("%s: SQLite file without tables (an interrupted creation?): creating the GeoPackage in "
                    "its place", path)
        return True
    if not METADATA_TABLES <= tables:
        user = sorted(t for t in tables if not t.startswith(("gpkg_", "rtree_", "sqlite_")))
        detail = (f"it has tables {user[:5]} but no GeoPackage metadata" if user else
                  "it is a half-initialised GeoPackage (its metadata tables are incomplete), probably left "
                  "by an interrupted run of an older geors")
        raise OutputError(f"{path}: exists but is not a GeoPackage: {detail}. geors does not overwrite "
                          "it: delete it if it holds nothing you need, or choose another output name.")
    return False


def complete_header(path: str | os.PathLike) -> bool:
    """Give a GeoPackage without them its ``application_id`` and ``user_version`` (what an interrupted
    creation by an older geors left); True when it did.

    Raises:
        OutputError: the file is an SQLite file of another application.
        sqlite3.OperationalError: the file cannot be written.
    """
    con = sqlite3.connect(path, timeout=60)
    try:
        app = con.execute("PRAGMA application_id").fetchone()[0]
        if app in APPLICATION_IDS:
            return False
        if app != 0:
            raise OutputError(f"{path}: is an SQLite file of another application (application_id "
                              f"{app:#x}), not a GeoPackage. Choose another output name.")
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if con.execute("PRAGMA user_version").fetchone()[0] == 0:
            con.execute(f"PRAGMA user_version = {USER_VERSION}")
        con.commit()
        return True
    finally:
        con.close()


def check_layers(path: Path, names: Iterable[str]) -> dict[str, dict]:
    """The layers among ``names`` that an existing GeoPackage holds (as :func:`read_layers`), each checked
    against :data:`LAYERS`.

    Raises:
        OutputError: the file cannot be read as a GeoPackage, or a layer's schema does not fit.
    """
    try:
        found = read_layers(path, names)
    except sqlite3.DatabaseError as exc:
        raise OutputError(f"{path}: exists but cannot be read as a GeoPackage ({exc}). geors does not "
                          "overwrite it: choose another output name.") from None
    for name, info in found.items():
        problems = schema_problems(name, info["geometry"], info["columns"])
        if problems:
            raise OutputError(
                f"{path}: existing layer '{name}' has an incompatible schema: {'; '.join(problems)}. "
                "geors leaves the file untouched; write to a new .gpkg or remove that layer.")
    return found


def layer_srs(con: sqlite3.Connection, layer: str) -> tuple[int, str | None] | None:
    """A geometry layer's ``(srs_id, WKT definition)``; None when ``gpkg_geometry_columns`` lacks it."""
    return con.execute(
        "SELECT g.srs_id, s.definition FROM gpkg_geometry_columns g JOIN gpkg_spatial_ref_sys s "
        "ON g.srs_id = s.srs_id WHERE lower(g.table_name) = lower(?)", (layer,)).fetchone()


def widen_extent(con: sqlite3.Connection, layer: str, bounds: tuple) -> None:
    """Widen a layer's extent in ``gpkg_contents`` to hold ``bounds`` ``(minx, miny, maxx, maxy)``, and
    set its ``last_change`` (inside the caller's transaction)."""
    x0, y0, x1, y1 = bounds
    con.execute(
        "UPDATE gpkg_contents SET min_x = min(coalesce(min_x, ?), ?), min_y = min(coalesce(min_y, ?), ?),"
        " max_x = max(coalesce(max_x, ?), ?), max_y = max(coalesce(max_y, ?), ?),"
        " last_change = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE lower(table_name) = lower(?)",
        (x0, x0, y0, y0, x1, x1, y1, y1, layer))
