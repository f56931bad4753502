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

Crash and race safety (what a kill or a second process can and cannot do):

- A new file is built under a temporary name in the same directory, with all
  its layers, and renamed to the user's name: a half-made file never has the
  user's name.
- Creating a file or adding layers to it happens under an exclusive lock
  (on ``<out>.lock``, see :mod:`geors.output_lock`), held until the writer's first commit
  (normally its run row), so two processes that start on the same new output
  at once take turns: the second finds the first one's layers and run row, and
  appends to the layers, reprojecting into their CRS.
- A kill inside a transaction leaves SQLite's hot rollback journal; it is
  rolled back (the way SQLite does it: a read on a read-write connection)
  before the file is inspected, so the file is again the last committed state.
- Each run row records its process (host, pid), so a later run can tell an
  abandoned ``running`` row from a live one (:meth:`GeoPackageWriter.mark_interrupted_runs`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import sqlite3
import struct
import time
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
from geors.faults import checkpoint
from geors.output_lock import creation_lock, holders, process_alive
from geors.results import TileResult

log = logging.getLogger(__name__)

__all__ = [
    "LAYERS",
    "LayerSchema",
    "GeoPackageWriter",
    "gpkg_blob",
    "gpkg_geometry",
    "areas_m2",
    "pixel_box_to_polygon",
    "new_run_id",
    "RUN_STATUSES",
    "recover_hot_journal",
]


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

#: values of ``geors_runs.status``
RUN_STATUSES = ("running", "finished", "cancelled", "failed", "interrupted")

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


def gpkg_geometry(blob: bytes | None):
    """The shapely geometry of a GeoPackage binary geometry (None for NULL)."""
    if blob is None or len(blob) < 8:
        return None
    flags = blob[3]
    sizes = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}
    return shapely.from_wkb(bytes(blob[8 + sizes.get((flags >> 1) & 0x07, 0):]))


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


@functools.lru_cache(maxsize=64)
def _crs(wkt: str) -> ProjCRS:
    return ProjCRS.from_user_input(wkt)


def _wkt(crs) -> str:
    return crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)


@functools.lru_cache(maxsize=64)
def _geodesic(wkt: str) -> tuple[Geod, Transformer] | None:
    """The ellipsoid of ``wkt``'s datum and a transformer to its (lon, lat); None without a datum."""
    pcrs = _crs(wkt)
    geo = pcrs.geodetic_crs
    if geo is None or geo.ellipsoid is None:
        return None
    ell = geo.ellipsoid
    return Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre), Transformer.from_crs(pcrs, geo, always_xy=True)


def _apply(tr: Transformer, geoms: np.ndarray) -> np.ndarray:
    """Transform an object array of shapely geometries (None allowed) with one call to PROJ."""
    return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def areas_m2(geoms: Sequence, crs) -> np.ndarray:
    """True (geodesic) areas in square metres of geometries in ``crs``.

    Vertices are taken to longitude/latitude on the ellipsoid of ``crs``'s own
    datum and the area is computed on that ellipsoid (``pyproj.Geod``), so the
    result does not depend on the projection's scale distortion (EPSG:3857 at
    60 degrees N would otherwise report 4x the area). Edges are the straight
    lines of ``crs`` sampled at the vertices, which for objects up to a few km is
    far below pixel size. A CRS without a datum (engineering CRS) falls back to
    planar area scaled by the axis unit. None/empty geometries get 0.
    """
    if len(geoms) == 0:
        return np.zeros(0)
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = list(geoms)
    present = ~(shapely.is_missing(arr) | shapely.is_empty(arr))
    out = np.zeros(len(arr))
    if not present.any():
        return out
    wkt = _wkt(crs)
    geodesic = _geodesic(wkt)
    if geodesic is None:
        pcrs = _crs(wkt)
        unit = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
        out[present] = shapely.area(arr[present]) * unit * unit
        return out
    geod, tr = geodesic
    # counter-clockwise shells, clockwise holes: Geod adds shells and subtracts holes by orientation
    lonlat = shapely.orient_polygons(_apply(tr, arr[present]))
    out[present] = [abs(geod.geometry_area_perimeter(g)[0]) for g in lonlat]
    return out


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


# ---------------------------------------------------------------- files, locks
_GPKG_APPLICATION_IDS = {0x47504B47, 0x47503130, 0x47503131}  # "GPKG", "GP10", "GP11"
_GPKG_APPLICATION_ID = 0x47504B47
# New files are GeoPackage 1.2 (GDAL's VERSION creation option), not GDAL >= 3.8's default 1.4: the GDAL 3.6 of
# QGIS 3.22 LTR (Debian 12) warns "may only be partially supported" on every 1.4 file, and geors writes nothing
# that needs 1.3/1.4. Existing files keep their version.
GPKG_VERSION = "1.2"
_GPKG_USER_VERSION = 10200  # GPKG_VERSION as PRAGMA user_version (set when completing a headerless file)
_LOCK_WAIT_S = 120.0
#: SQLite's busy timeout on the writer's connection (one wait for a lock), and how long a commit keeps
#: waiting for readers in all (a reader's open read transaction blocks a commit in rollback-journal mode).
_BUSY_TIMEOUT_S = 60.0
_READERS_WAIT_S = 600.0


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.creating-"


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or with ``directory`` a folder's entries) to disk; best effort."""
    flags = os.O_RDONLY
    if directory:
        if not hasattr(os, "O_DIRECTORY"):
            return  # Windows has no O_DIRECTORY: a folder cannot be opened there to fsync it
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _space_hint(path: Path) -> str:
    """'; the disk is full (12 KiB free on /data)' when the output's file system is (nearly) full."""
    import shutil

    try:
        free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    except OSError:
        return ""
    if free > 64 * 2**20:
        return ""
    return f"; the disk is full ({free / 2**10:,.0f} KiB free on {path.parent})"


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


# ---------------------------------------------------------------- writer
class GeoPackageWriter:
    """Appends results to a GeoPackage, one transaction per batch of tiles.

    Args:
        path: output ``.gpkg``; its directory must exist.
        crs: default CRS of the geometries written (rasterio or pyproj CRS, or
            WKT). New layers take it; existing layers keep theirs, and
            geometries are reprojected into them. Writes that pass their own
            ``crs`` (e.g. each scene of an archive) are reprojected from it.
        layers: layer names from :data:`LAYERS` this writer will fill; the
            ``geors_tiles`` ledger and ``geors_runs`` table are always included.
        run_id: id recorded in every row (default: a new one).

    Raises:
        OutputError: directory missing or not writable, the file is read-only,
            not a GeoPackage, or has a layer with an incompatible schema; another
            process holds the creation lock for too long. Raised before anything
            is written.
    """

    def __init__(self, path: str | os.PathLike, crs, layers: Iterable[str] = ("detections",),
                 run_id: str | None = None):
        self.path = Path(path)
        self._con: sqlite3.Connection | None = None
        self._lock: contextlib.ExitStack | None = None
        self.crs_wkt = _wkt(crs)
        self.crs = _crs(self.crs_wkt)
        self.layers = list(dict.fromkeys([*layers, "geors_tiles", "geors_runs"]))
        unknown = [n for n in self.layers if n not in LAYERS]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; known: {sorted(LAYERS)}")
        self.run_id = run_id or new_run_id()
        self._extents: dict[str, tuple] = {}
        self._layer_srs: dict[str, int] = {}
        self._layer_crs: dict[str, ProjCRS] = {}
        self._transformers: dict[tuple[str, str], Transformer | None] = {}
        self._check_destination()
        # Held across creation, layer set-up and this writer's first commit (usually start_run), so a second
        # process sees the first one's layers *and* its run row before it decides anything.
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(creation_lock(self.path, _LOCK_WAIT_S))
        try:
            self._remove_stale_temp_files()
            self._recover_hot_journal()
            if self._needs_creation():
                self._existing: dict[str, dict] = {}
                self._create_new_file()
            else:
                self._complete_gpkg_header()
                self._existing = self._inspect_existing()
                self._create_missing_layers(self.path)
                self._open()
                self._add_missing_columns()
            if self._con is None:
                self._open()
            self._read_layer_crs()
        except BaseException:
            self.close()
            raise

    # -- checks -----------------------------------------------------------------
    def _check_destination(self) -> None:
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.exists():
            raise OutputError(f"{self.path}: the output directory {parent} does not exist. Create it first "
                              f"(mkdir -p {parent}) or choose another path.")
        if self.path.suffix.lower() != ".gpkg":
            raise OutputError(f"{self.path}: output must be a GeoPackage file ending in .gpkg.")
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory; give a .gpkg file path.")
        if not os.access(parent, os.W_OK | os.X_OK):
            what = "append to it" if self.path.exists() else "create it"
            raise OutputError(f"{self.path}: the directory {parent} is not writable, so geors cannot {what} "
                              "(SQLite keeps its rollback journal next to the file). Make the directory writable "
                              "or choose an output in a writable directory.")
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise OutputError(f"{self.path}: the file is read-only (or unreadable) and geors only appends to "
                              f"existing outputs. Make it writable (chmod u+rw {self.path}) or choose another "
                              "output name.")

    def _remove_stale_temp_files(self) -> None:
        # Only a creator holding the lock makes temporary files, and we hold it: any left are from a killed run.
        prefix = _temp_prefix(self.path)
        for p in [p for p in self.path.parent.iterdir() if p.name.startswith(prefix)]:
            log.info("%s: removing %s left by an interrupted creation", self.path, p.name)
            with contextlib.suppress(OSError):
                p.unlink()

    def _recover_hot_journal(self) -> None:
        recover_hot_journal(self.path)

    def _needs_creation(self) -> bool:
        """True when there is no file, or one that holds nothing (0 bytes, or SQLite without tables).

        Such a file is what an interrupted creation by an older geors leaves; it
        is replaced by a complete GeoPackage. Anything else that is not a
        GeoPackage is refused with a message.
        """
        if not self.path.exists():
            return True
        if self.path.stat().st_size == 0:
            log.warning("%s: empty file (an interrupted creation?): creating the GeoPackage in its place", self.path)
            return True
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
            try:
                tables = {r[0].lower() for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                con.close()
        except sqlite3.DatabaseError:
            raise OutputError(f"{self.path}: exists but is not a GeoPackage (or is corrupt). geors does not "
                              "overwrite it: delete it if it is yours and unneeded, or choose another output "
                              "name.") from None
        if not tables:
            log.warning("%s: SQLite file without tables (an interrupted creation?): creating the GeoPackage in "
                        "its place", self.path)
            return True
        if not {"gpkg_contents", "gpkg_spatial_ref_sys", "gpkg_geometry_columns"} <= tables:
            user = sorted(t for t in tables if not t.startswith(("gpkg_", "rtree_", "sqlite_")))
            detail = (f"it has tables {user[:5]} but no GeoPackage metadata" if user else
                      "it is a half-initialised GeoPackage (its metadata tables are incomplete), probably left "
                      "by an interrupted run of an older geors")
            raise OutputError(f"{self.path}: exists but is not a GeoPackage: {detail}. geors does not overwrite "
                              "it: delete it if it holds nothing you need, or choose another output name.")
        return False

    def _complete_gpkg_header(self) -> None:
        """Set application_id/user_version when a GeoPackage lacks them (an interrupted older creation)."""
        con = sqlite3.connect(self.path, timeout=60)
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            if app in _GPKG_APPLICATION_IDS:
                return
            if app != 0:
                raise OutputError(f"{self.path}: is an SQLite file of another application (application_id "
                                  f"{app:#x}), not a GeoPackage. Choose another output name.")
            con.execute(f"PRAGMA application_id = {_GPKG_APPLICATION_ID}")
            if con.execute("PRAGMA user_version").fetchone()[0] == 0:
                con.execute(f"PRAGMA user_version = {_GPKG_USER_VERSION}")
            con.commit()
            log.warning("%s: completed the GeoPackage header (application_id, user_version)", self.path)
        except sqlite3.OperationalError as exc:
            raise self._output_error(exc) from None
        finally:
            con.close()

    def _inspect_existing(self) -> dict[str, dict]:
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
            try:
                found = {}
                for (name,) in con.execute("SELECT table_name FROM gpkg_contents").fetchall():
                    if name.lower() not in {n.lower() for n in self.layers}:
                        continue
                    cols = {r[1].lower(): (r[2] or "").upper()
                            for r in con.execute(f'PRAGMA table_info("{name}")')}
                    gt = con.execute("SELECT geometry_type_name FROM gpkg_geometry_columns WHERE lower(table_name)"
                                     " = lower(?)", (name,)).fetchone()
                    found[name.lower()] = {"columns": cols, "geometry": gt[0].upper() if gt else None}
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise OutputError(f"{self.path}: exists but cannot be read as a GeoPackage ({exc}). geors does not "
                              "overwrite it: choose another output name.") from None
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
                    if fname not in schema.added:
                        problems.append(f"field '{fname}' missing")
                elif have.split("(")[0] not in _COMPATIBLE[kind]:
                    problems.append(f"field '{fname}' is {have} (need {_SQL_TYPES[kind]})")
            if problems:
                raise OutputError(
                    f"{self.path}: existing layer '{name}' has an incompatible schema: {'; '.join(problems)}. "
                    "geors leaves the file untouched; write to a new .gpkg or remove that layer.")
        return found

    # -- creation ---------------------------------------------------------------
    def _create_new_file(self) -> None:
        """Build the file with all layers under a temporary name, then give it the user's name."""
        tmp = self.path.with_name(f"{_temp_prefix(self.path)}{os.getpid()}.gpkg")
        try:
            self._create_missing_layers(tmp)
            self._check_created(tmp)  # GDAL can leave a half-made file without raising (measured: disk full)
            _fsync_path(tmp)
            os.replace(tmp, self.path)  # we hold the lock; replaces only an empty leftover
        except BaseException:
            for p in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal")):
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
        _fsync_path(self.path.parent, directory=True)

    def _check_created(self, target: Path) -> None:
        """The new file holds the GeoPackage metadata tables and every layer, or creation failed."""
        try:
            con = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
            try:
                tables = {r[0].lower() for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                layers = ({r[0].lower() for r in con.execute("SELECT table_name FROM gpkg_contents")}
                          if "gpkg_contents" in tables else set())
            finally:
                con.close()
        except sqlite3.Error as exc:
            tables, layers = set(), set()
            log.debug("%s: %s", target, exc)
        missing = sorted(({"gpkg_contents", "gpkg_spatial_ref_sys", "gpkg_geometry_columns"} - tables)
                         | ({n.lower() for n in self.layers} - layers))
        if missing:
            raise OutputError(f"{self.path}: creating the GeoPackage failed without an error from GDAL "
                              f"({', '.join(missing[:4])} missing){_space_hint(self.path)}. Nothing was left "
                              "under this name.")

    def _create_missing_layers(self, target: Path) -> None:
        import geopandas as gpd
        import pandas as pd
        import pyogrio

        dtypes = {"str": str, "int": "int64", "float": "float64"}
        created = 0
        for name in self.layers:
            if name.lower() in self._existing:
                continue
            schema = LAYERS[name]
            cols = {f: pd.Series([], dtype=dtypes[k]) for f, k in schema.fields}
            if schema.geometry:
                df = gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=self.crs_wkt))
                kwargs = {"geometry_type": schema.geometry}
            else:
                df, kwargs = pd.DataFrame(cols), {}
            for attempt in range(600):  # another process may be inside a transaction on an existing file
                try:
                    new = {} if target.exists() else {"dataset_options": {"VERSION": GPKG_VERSION}}
                    pyogrio.write_dataframe(df, target, layer=name, driver="GPKG", **kwargs, **new)
                    break
                except Exception as exc:  # GDAL errors come in several classes
                    if "locked" in str(exc).lower() and attempt < 599:
                        time.sleep(0.1)
                        continue
                    if not os.access(target.parent, os.W_OK) or "readonly" in str(exc).lower().replace("-", ""):
                        raise OutputError(f"{self.path}: cannot create layer '{name}': the file or its directory "
                                          "is read-only. Make it writable or choose another output.") from exc
                    raise OutputError(f"{self.path}: cannot create layer '{name}': {exc}"
                                      f"{_space_hint(self.path)}") from None
            created += 1
            if created == 1:
                checkpoint("create")

    def _open(self) -> None:
        self._con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        _register_st_functions(self._con)

    def _add_missing_columns(self) -> None:
        """Columns added to :data:`LAYERS` after files were written (e.g. ``geors_runs.pid``)."""
        todo = []
        for name, info in self._existing.items():
            schema = LAYERS[name]
            todo += [(name, f, k) for f, k in schema.fields if f in schema.added and f not in info["columns"]]
        if not todo:
            return
        try:  # not self.transaction(): its commit would release the creation lock
            self._con.execute("BEGIN IMMEDIATE")
            for name, f, k in todo:
                self._con.execute(f'ALTER TABLE "{name}" ADD COLUMN "{f}" {_SQL_TYPES[k]}')
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            raise self._output_error(exc) from None
        for name, f, _ in todo:
            self._existing[name]["columns"][f] = _SQL_TYPES[dict(LAYERS[name].fields)[f]]

    def _read_layer_crs(self) -> None:
        for name in self.layers:
            if not LAYERS[name].geometry:
                continue
            row = self._con.execute(
                "SELECT g.srs_id, s.definition FROM gpkg_geometry_columns g JOIN gpkg_spatial_ref_sys s "
                "ON g.srs_id = s.srs_id WHERE lower(g.table_name) = lower(?)", (name,)).fetchone()
            if row is None:
                raise OutputError(f"{self.path}: layer '{name}' has no entry in gpkg_geometry_columns; the file "
                                  "is damaged. Choose another output name.")
            srs_id, wkt = row
            self._layer_srs[name] = srs_id
            self._layer_crs[name] = _crs(wkt) if wkt and wkt != "undefined" else self.crs

    def _output_error(self, exc: sqlite3.Error) -> Exception:
        """A user-facing error for SQLite failures the user can fix (read-only, locked); others unchanged."""
        msg = str(exc).lower()
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            return OutputError(f"{self.path}: cannot write ({exc}): the file or its directory is read-only. "
                               "Make both writable or choose another output.")
        if "locked" in msg:
            return OutputError(f"{self.path}: another process has held a write lock on this file for more than "
                               f"{_BUSY_TIMEOUT_S:.0f} s. Wait for it to finish, or write to another output.")
        if "full" in msg or "disk i/o" in msg:
            hint = _space_hint(self.path) or " (a full disk, a file size limit or a failing device?)"
            return OutputError(f"{self.path}: cannot write ({exc}){hint}. What was committed before is valid: "
                               "free space, then continue with --resume.")
        return exc

    # -- reprojection -------------------------------------------------------------
    def layer_crs(self, layer: str) -> ProjCRS:
        """CRS of an output layer (the file's, which can differ from the writer's ``crs``)."""
        return self._layer_crs[layer]

    def _transformer(self, src_wkt: str, layer: str) -> Transformer | None:
        key = (src_wkt, layer)
        if key not in self._transformers:
            src, dst = _crs(src_wkt), self._layer_crs[layer]
            if src.equals(dst, ignore_axis_order=True):
                self._transformers[key] = None
            else:
                same = [t for (w, _), t in self._transformers.items() if w == src_wkt and t is not None
                        and _crs(t.target_crs.to_wkt()).equals(dst, ignore_axis_order=True)]
                if not same:
                    log.warning("%s: layer %s is in %s; reprojecting features from %s", self.path, layer,
                                dst.name, src.name)
                self._transformers[key] = same[0] if same else Transformer.from_crs(src, dst, always_xy=True)
        return self._transformers[key]

    # -- writing ----------------------------------------------------------------
    def _insert(self, layer: str, rows: list[dict], geoms: Sequence | None, crs_wkt: str | None = None) -> list[int]:
        """Insert rows (geometries in ``crs_wkt``, default the writer's CRS) into the open transaction."""
        schema = LAYERS[layer]
        names = [f for f, _ in schema.fields]
        cols = ['"geom"'] if schema.geometry else []
        cols += [f'"{n}"' for n in names]
        sql = f'INSERT INTO "{layer}" ({", ".join(cols)}) VALUES ({", ".join("?" * len(cols))})'
        blobs: list = [None] * len(rows)
        if schema.geometry:
            if geoms is None or len(geoms) != len(rows):
                raise ValueError(f"layer {layer}: {len(rows)} rows need as many geometries")
            arr = np.empty(len(rows), dtype=object)
            arr[:] = list(geoms)
            tr = self._transformer(crs_wkt or self.crs_wkt, layer)
            if tr is not None:
                arr = _apply(tr, arr)
            srs = self._layer_srs[layer]
            for i, g in enumerate(arr):
                if schema.geometry == "MultiPolygon":
                    g = _to_multi(g)
                blobs[i] = gpkg_blob(g, srs)
                if g is not None and not shapely.is_empty(g):
                    self._extent_update(layer, shapely.bounds(g))
        fids = []
        for row, blob in zip(rows, blobs, strict=True):
            values = [row.get(n) for n in names]
            if schema.geometry:
                values = [blob, *values]
            fids.append(self._con.execute(sql, values).lastrowid)
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
        self._extents = {}

    @contextlib.contextmanager
    def transaction(self):
        """One SQLite transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error).

        Re-entrant: inside an open transaction it joins it, so
        ``with w.transaction(): w.write_rows(...); w.write_rows(...)`` commits
        both together.
        """
        if self._con is None:
            raise ValueError(f"{self.path}: writer is closed")
        if self._con.in_transaction:
            yield self
            return
        self._extents = {}
        try:
            self._con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._output_error(exc) from None
        try:
            yield self
            self._flush_extents()
            checkpoint("commit")
            self._commit()
            self._release_lock()
        except BaseException as exc:
            if self._con is not None and self._con.in_transaction:
                self._con.execute("ROLLBACK")
            self._extents = {}
            if isinstance(exc, sqlite3.OperationalError):
                err = self._output_error(exc)
                if err is not exc:
                    raise err from None
            raise

    def _commit(self) -> None:
        """COMMIT, waiting for readers: in rollback-journal mode a commit needs every reader's read
        transaction to end (QGIS with the layer open, a script in a long query). SQLite waits
        ``_BUSY_TIMEOUT_S`` per try; the commit is retried (the transaction stays open) for up to
        ``_READERS_WAIT_S`` in all, then the run stops with a message naming the programs that hold the file."""
        start = time.monotonic()
        while True:
            try:
                self._con.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or not self._con.in_transaction:
                    raise
                waited = time.monotonic() - start
                who = holders(self.path)
                if waited >= _READERS_WAIT_S:
                    raise OutputError(
                        f"{self.path}: another program{who} has kept this file open in a read transaction for "
                        f"{waited:.0f} s, so geors cannot commit its results. Close this file's layers there (an "
                        "open attribute table or an unfinished query keeps a read open); what was committed "
                        "before is valid: then continue with --resume.") from None
                log.warning("%s: waiting for another program%s reading this file to finish its read before "
                            "geors can commit (%.0f s so far, at most %.0f s)", self.path, who, waited,
                            _READERS_WAIT_S)

    def write_results(self, results: Sequence[TileResult], model: str = "", crs=None) -> None:
        """Write a batch of tiles: their features and ledger rows in one transaction.

        Args:
            results: tile results of one batch (any scenes).
            model: model name recorded with detections.
            crs: CRS of the results' geometries (the scene's); default the
                writer's ``crs``. Features are reprojected into each layer's
                CRS; ``area_m2`` is computed before, in this CRS.
        """
        src = _wkt(crs) if crs is not None else self.crs_wkt
        with self.transaction():
            for res in results:
                self._write_one(res, model, src)

    def _write_one(self, res: TileResult, model: str, src: str) -> None:
        for layer, items in (("detections", res.detections), ("instances", res.instances),
                             ("segmentation", res.segmentation)):
            if items and layer not in self.layers:
                raise ValueError(f"tile {res.tile_id} has {layer} but this writer was opened for {self.layers}")
        common = {"tile_id": res.tile_id, "scene": res.scene, "run_id": self.run_id}
        det_fids: list[int] = []
        if res.detections:
            rows = [{**common, "class": d.class_name, "class_id": int(d.class_id), "score": float(d.score),
                     "gate_score": None if d.gate_score is None else float(d.gate_score), "model": model,
                     "passes_threshold": int(d.passes_threshold)}
                    for d in res.detections]
            det_fids = self._insert("detections", rows, [d.geometry for d in res.detections], src)
        if res.instances:
            areas = areas_m2([i.geometry for i in res.instances], src)
            rows = []
            for inst, area in zip(res.instances, areas, strict=True):
                fid = det_fids[inst.detection_index] if inst.detection_index is not None and det_fids else None
                rows.append({**common, "detection_fid": fid, "class": inst.class_name,
                             "class_id": inst.class_id, "score": None if inst.score is None else float(inst.score),
                             "mask_score": None if inst.mask_score is None else float(inst.mask_score),
                             "area_m2": float(area), "mask_method": inst.mask_method,
                             "box_fid": inst.box_fid, "box_attributes": inst.box_attributes})
            self._insert("instances", rows, [i.geometry for i in res.instances], src)
        if res.segmentation:
            areas = areas_m2([s.geometry for s in res.segmentation], src)
            rows = [{**common, "class": s.class_name, "class_id": int(s.class_id), "area_m2": float(a),
                     "edge": int(bool(s.edge))} for s, a in zip(res.segmentation, areas, strict=True)]
            self._insert("segmentation", rows, [s.geometry for s in res.segmentation], src)
        for layer, items in res.rows.items():  # plain layers (the tile grid): fields given by the stage
            if layer not in self.layers:
                raise ValueError(f"tile {res.tile_id} has {layer} rows but this writer was opened for {self.layers}")
            self._insert(layer, [{"run_id": self.run_id, **row} for row, _ in items], [g for _, g in items], src)
        w = res.window
        ledger = {**common, "col_off": int(w.col_off), "row_off": int(w.row_off), "width": int(w.width),
                  "height": int(w.height), "status": res.status,
                  "gate_score": None if res.gate_score is None else float(res.gate_score),
                  "n_detections": len(res.detections), "n_instances": len(res.instances),
                  "n_segments": len(res.segmentation), "seconds": float(res.seconds), "message": res.message}
        self._insert("geors_tiles", [ledger], None)

    def write_rows(self, layer: str, rows: Sequence[dict], geoms: Sequence | None = None, crs=None) -> list[int]:
        """Write plain rows to a layer of :data:`LAYERS` in one transaction; returns their fids.

        Args:
            layer: a layer this writer was opened for.
            rows: field name -> value; missing fields are NULL, ``run_id``
                defaults to this writer's.
            geoms: one shapely geometry (or None) per row, for layers with geometry.
            crs: CRS of ``geoms`` (default the writer's); reprojected into the layer's.

        Inside ``with writer.transaction():`` the rows join that transaction.
        """
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not opened by this writer ({self.layers})")
        src = _wkt(crs) if crs is not None else self.crs_wkt
        with self.transaction():
            return self._insert(layer, [{"run_id": self.run_id, **r} for r in rows], geoms, src)

    def write_features(self, layer: str, rows: list[dict], geoms: list) -> list[int]:
        """Same as :meth:`write_rows` (kept for existing callers)."""
        return self.write_rows(layer, rows, geoms)

    def delete_scene_rows(self, scene: str) -> dict[str, int]:
        """Remove every row of ``scene`` from all layers and the ledger in one transaction (``--overwrite``).

        Returns:
            rows deleted per layer (layers without rows of that scene omitted).
        """
        deleted: dict[str, int] = {}
        with self.transaction():
            tables = [r[0] for r in self._con.execute("SELECT table_name FROM gpkg_contents")]
            for name in tables:
                cols = {r[1].lower() for r in self._con.execute(f'PRAGMA table_info("{name}")')}
                if name.lower() not in LAYERS or "scene" not in cols:
                    continue
                n = self._con.execute(f'DELETE FROM "{name}" WHERE scene = ?', (scene,)).rowcount
                if n:
                    deleted[name] = n
        return deleted

    def read_rows(self, layer: str, where: str = "1 = 1", params: Sequence = (),
                  fields: Sequence[str] | None = ()) -> list[tuple[int, dict, object]]:
        """Rows of ``layer`` matching an SQL condition, as ``(fid, {field: value}, geometry)``.

        Args:
            layer: a layer of :data:`LAYERS`.
            where: SQL condition over the layer's fields, with ``?`` placeholders.
            params: values of the placeholders.
            fields: fields to return (empty or None: all of the layer's schema).

        Geometries are shapely objects in the layer's CRS (:meth:`layer_crs`),
        None for attribute tables.
        """
        schema = LAYERS[layer]
        names = list(fields or ()) or [f for f, _ in schema.fields]
        geom = '"geom"' if schema.geometry else "NULL"
        cols = ", ".join(f'"{n}"' for n in names)
        sql = f'SELECT fid, {geom}{", " + cols if cols else ""} FROM "{layer}" WHERE {where} ORDER BY fid'
        return [(r[0], dict(zip(names, r[2:], strict=True)), gpkg_geometry(r[1]))
                for r in self._con.execute(sql, tuple(params))]

    def replace_rows(self, layer: str, fids: Sequence[int], rows: Sequence[dict], geoms: Sequence | None = None,
                     crs=None) -> list[int]:
        """Delete rows by fid and insert new ones in one transaction (e.g. polygons dissolved across tiles).

        Args:
            layer: a layer this writer was opened for.
            fids: rows to delete.
            rows, geoms: the new rows, as for :meth:`write_rows`.
            crs: CRS of ``geoms``; default the *layer's* CRS (geometries read
                with :meth:`read_rows` come back unchanged).

        Returns:
            fids of the new rows.
        """
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not opened by this writer ({self.layers})")
        src = _wkt(crs) if crs is not None else self._layer_crs.get(layer, self.crs).to_wkt()
        with self.transaction():
            self._con.executemany(f'DELETE FROM "{layer}" WHERE fid = ?', [(int(f),) for f in fids])
            return self._insert(layer, [{"run_id": self.run_id, **r} for r in rows], geoms, src)

    # -- runs and resume ----------------------------------------------------------
    def start_run(self, command: str, config: dict, models: dict | None = None) -> None:
        """Record the run (version, full config as JSON, model names and sha256, host and pid)."""
        from geors import __version__

        with self.transaction():
            self._insert("geors_runs", [{"run_id": self.run_id, "geors_version": __version__, "command": command,
                                         "config": json.dumps(config, default=str, sort_keys=True),
                                         "models": json.dumps(models or {}, default=str, sort_keys=True),
                                         "started": _now(), "finished": None, "status": "running",
                                         "host": socket.gethostname(), "pid": os.getpid()}], None)

    def finish_run(self, status: str = "finished") -> None:
        """Close this run's row: ``finished``, ``cancelled``, ``failed`` or ``interrupted``."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"run status must be one of {RUN_STATUSES[1:]}, got {status!r}")
        if status == "finished":
            checkpoint("finish")
        with self.transaction():
            self._con.execute('UPDATE "geors_runs" SET finished = ?, status = ? WHERE run_id = ?',
                              (_now(), status, self.run_id))

    def mark_interrupted_runs(self, exclude_run_id: str | None = None) -> list[str]:
        """Mark runs left ``running`` by a process that is gone as ``interrupted``.

        A run is abandoned when its recorded process (host, pid) no longer
        exists on this host, or the pid now belongs to a younger process. Rows
        without a pid (written by geors before it recorded one) count as
        abandoned. Runs recorded on another host are left alone: their liveness
        cannot be checked from here.

        Args:
            exclude_run_id: a run never marked (default: this writer's run).

        Returns:
            the run ids marked.
        """
        exclude = exclude_run_id if exclude_run_id is not None else self.run_id
        host = socket.gethostname()
        rows = self._con.execute(
            'SELECT run_id, host, pid, started FROM "geors_runs" WHERE status = \'running\' AND run_id != ?',
            (exclude,)).fetchall()
        marked = []
        for run_id, run_host, pid, started in rows:
            if pid is not None:
                if run_host != host:
                    log.info("%s: run %s is 'running' on host %s; left as is", self.path, run_id, run_host)
                    continue
                if int(pid) == os.getpid() or process_alive(int(pid), started):
                    continue
            marked.append(run_id)
        if marked:  # a write transaction only when there is something to mark
            with self.transaction():
                self._con.executemany('UPDATE "geors_runs" SET status = \'interrupted\' WHERE run_id = ? '
                                      "AND status = 'running'", [(r,) for r in marked])
        if marked:
            log.info("%s: marked %d abandoned run(s) interrupted: %s", self.path, len(marked), ", ".join(marked))
        return marked

    def live_runs(self, exclude_run_id: str | None = None) -> list[dict]:
        """Runs still ``running`` in a live process (other hosts count as live: they cannot be checked).

        Call it after opening the writer and before its first commit: the
        creation lock is held until then, so a process that started on the same
        output a moment earlier has its run row committed and shows up here
        (e.g. to refuse writing the same scene twice at once).

        Args:
            exclude_run_id: a run left out (default: this writer's).
        """
        exclude = exclude_run_id if exclude_run_id is not None else self.run_id
        host = socket.gethostname()
        live = []
        for run in self.runs():
            if run["status"] != "running" or run["run_id"] == exclude or run.get("pid") is None:
                continue
            if run.get("host") != host or int(run["pid"]) == os.getpid() or process_alive(int(run["pid"]),
                                                                                          run["started"]):
                live.append(run)
        return live

    def runs(self) -> list[dict]:
        """The ``geors_runs`` rows in order, as dicts; ``config`` and ``models`` decoded from JSON."""
        cur = self._con.execute('SELECT * FROM "geors_runs" ORDER BY fid')
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            for key in ("config", "models"):
                with contextlib.suppress(TypeError, ValueError):
                    row[key] = json.loads(row[key])
            out.append(row)
        return out

    def finished_tiles(self, scene: str) -> dict[str, tuple[int, int, int, int]]:
        """Tiles of ``scene`` already committed (any run): tile_id -> window, for ``--resume``."""
        rows = self._con.execute(
            'SELECT tile_id, col_off, row_off, width, height FROM "geors_tiles" WHERE scene = ? '
            "AND status != 'failed'", (scene,)).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def _release_lock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            self._lock = None
            lock.close()

    def close(self) -> None:
        if getattr(self, "_con", None) is not None:
            self._con.close()
            self._con = None
        self._release_lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
