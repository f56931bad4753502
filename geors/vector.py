"""The GeoPackage writer: appends to one output file, one SQLite transaction per batch of tiles.

Layers are created through GDAL (:mod:`geors.gpkg`: exact CRS registration,
R-tree index); rows are inserted with SQLite directly, because only that lets
one transaction span several layers: a batch's detections, instances,
segmentation polygons *and* their ledger rows (:mod:`geors.ledger`) are
committed together or not at all. An existing file is checked before anything
is written (a GeoPackage? layers with compatible fields and geometry?) and only
ever appended to, reprojecting into its layers' CRS.

Crash and race safety: a new file is built under a temporary name in the same
directory and renamed to the user's name, so a half-made file never has it;
creating a file or adding layers happens under the output's lock
(:mod:`geors.output_lock`), held until the writer's first commit (normally its
run row), so two processes that start on the same new output take turns; a hot
journal left by a kill is rolled back before the file is inspected; a commit
waits for readers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pyproj import CRS as ProjCRS
from pyproj import Transformer

from geors import ledger
from geors.crs import areas_m2, as_pyproj, to_wkt, transform_geometries
from geors.errors import OutputError
from geors.faults import checkpoint
from geors.gpkg import (
    LAYERS,
    METADATA_TABLES,
    SQL_TYPES,
    check_layers,
    complete_header,
    create_layer,
    encode_geometries,
    gpkg_geometry,
    layer_srs,
    needs_creation,
    read_layers,
    read_tables,
    recover_hot_journal,
    register_st_functions,
    widen_extent,
)
from geors.output_lock import creation_lock, holders
from geors.results import TileResult

log = logging.getLogger(__name__)

__all__ = ["GeoPackageWriter"]

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
        self.crs_wkt = to_wkt(crs)
        self.crs = as_pyproj(self.crs_wkt)
        self.layers = list(dict.fromkeys([*layers, "geors_tiles", "geors_runs"]))
        unknown = [n for n in self.layers if n not in LAYERS]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; known: {sorted(LAYERS)}")
        self.run_id = run_id or ledger.new_run_id()
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
            recover_hot_journal(self.path)
            if needs_creation(self.path):
                self._existing: dict[str, dict] = {}
                self._create_new_file()
            else:
                try:
                    if complete_header(self.path):
                        log.warning("%s: completed the GeoPackage header (application_id, user_version)", self.path)
                except sqlite3.OperationalError as exc:
                    raise self._output_error(exc) from None
                self._existing = check_layers(self.path, self.layers)
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
            tables = read_tables(target, timeout=5.0)
            layers = set(read_layers(target)) if "gpkg_contents" in tables else set()
        except sqlite3.Error as exc:
            tables, layers = set(), set()
            log.debug("%s: %s", target, exc)
        missing = sorted((METADATA_TABLES - tables)
                         | ({n.lower() for n in self.layers} - layers))
        if missing:
            raise OutputError(f"{self.path}: creating the GeoPackage failed without an error from GDAL "
                              f"({', '.join(missing[:4])} missing){_space_hint(self.path)}. Nothing was left "
                              "under this name.")

    def _create_missing_layers(self, target: Path) -> None:
        created = 0
        for name in self.layers:
            if name.lower() in self._existing:
                continue
            try:  # another process may be inside a transaction on an existing file: create_layer waits for it
                create_layer(target, name, self.crs_wkt)
            except Exception as exc:  # GDAL errors come in several classes
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
        register_st_functions(self._con)

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
                self._con.execute(f'ALTER TABLE "{name}" ADD COLUMN "{f}" {SQL_TYPES[k]}')
            self._con.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            raise self._output_error(exc) from None
        for name, f, _ in todo:
            self._existing[name]["columns"][f] = SQL_TYPES[dict(LAYERS[name].fields)[f]]

    def _read_layer_crs(self) -> None:
        for name in self.layers:
            if not LAYERS[name].geometry:
                continue
            row = layer_srs(self._con, name)
            if row is None:
                raise OutputError(f"{self.path}: layer '{name}' has no entry in gpkg_geometry_columns; the file "
                                  "is damaged. Choose another output name.")
            srs_id, wkt = row
            self._layer_srs[name] = srs_id
            self._layer_crs[name] = as_pyproj(wkt) if wkt and wkt != "undefined" else self.crs

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
            src, dst = as_pyproj(src_wkt), self._layer_crs[layer]
            if src.equals(dst, ignore_axis_order=True):
                self._transformers[key] = None
            else:
                same = [t for (w, _), t in self._transformers.items() if w == src_wkt and t is not None
                        and as_pyproj(t.target_crs.to_wkt()).equals(dst, ignore_axis_order=True)]
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
                arr = transform_geometries(tr, arr)
            blobs, env = encode_geometries(layer, arr, self._layer_srs[layer])
            if env is not None:
                self._extent_update(layer, env)
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
        for layer, bounds in self._extents.items():
            widen_extent(self._con, layer, bounds)
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
        src = to_wkt(crs) if crs is not None else self.crs_wkt
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
        src = to_wkt(crs) if crs is not None else self.crs_wkt
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
        src = to_wkt(crs) if crs is not None else self._layer_crs.get(layer, self.crs).to_wkt()
        with self.transaction():
            self._con.executemany(f'DELETE FROM "{layer}" WHERE fid = ?', [(int(f),) for f in fids])
            return self._insert(layer, [{"run_id": self.run_id, **r} for r in rows], geoms, src)

    # -- the ledger and the run record (geors.ledger) -------------------------------
    def start_run(self, command: str, config: dict, models: dict | None = None) -> None:
        """Record the run (version, full config as JSON, model names and sha256, host and pid)."""
        with self.transaction():
            self._insert("geors_runs", [ledger.run_row(self.run_id, command, config, models)], None)

    def finish_run(self, status: str = "finished") -> None:
        """Close this run's row: ``finished``, ``cancelled``, ``failed`` or ``interrupted``."""
        if status == "finished":
            checkpoint("finish")
        with self.transaction():
            ledger.set_run_status(self._con, self.run_id, status)

    def mark_interrupted_runs(self, exclude_run_id: str | None = None) -> list[str]:
        """Mark runs left ``running`` by a process that is gone as ``interrupted`` (:func:`geors.ledger.abandoned_runs`).

        Runs recorded on another host are left alone: their liveness cannot be
        checked from here. Rows without a pid (written by geors before it
        recorded one) count as abandoned.

        Args:
            exclude_run_id: a run never marked (default: this writer's run).

        Returns:
            the run ids marked.
        """
        exclude = exclude_run_id if exclude_run_id is not None else self.run_id
        marked = ledger.abandoned_runs(self.runs(), exclude)
        if marked:  # a write transaction only when there is something to mark
            with self.transaction():
                ledger.mark_interrupted(self._con, marked)
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
        return ledger.live_runs(self.runs(), exclude_run_id if exclude_run_id is not None else self.run_id)

    def runs(self) -> list[dict]:
        """The ``geors_runs`` rows in order, as dicts; ``config`` and ``models`` decoded from JSON."""
        return ledger.read_runs(self._con)

    def finished_tiles(self, scene: str) -> dict[str, tuple[int, int, int, int]]:
        """Tiles of ``scene`` already committed (any run): tile_id -> window, for ``--resume``."""
        return ledger.finished_tiles(self._con, scene).get(scene, {})

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
