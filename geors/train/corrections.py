"""An analyst's corrections of a detections layer, as training data for a fine-tune (issue 28, the analyst's loop).

After ``geors detect`` (or ``geors run``) the analyst edits the ``detections`` layer of the output GeoPackage,
in QGIS or any GIS, and saves it in place: deletes false positives, draws the objects the model missed and,
optionally, draws the polygons of the area reviewed into a layer ``reviewed_area`` (or a file of its own).
:func:`read_corrections` compares the layer with what the run wrote and :func:`correction_tiles` turns the
result into training tiles for :func:`geors.train.detector.train_detector`. Everything comes from the edited
file alone: the run record (``geors_runs``: model file and sha256, thresholds, tile grid, every scene's path and
fingerprint) and the tile ledger (``geors_tiles``: how many detections each tile wrote).

What each row is:

- **kept**: a row the run wrote that is still there (its ``run_id``, ``tile_id`` and ``score`` are the run's;
  its outline may have been moved or reshaped: the box used is the edited one). A kept row is a positive
  when its ``passes_threshold`` is 1. Rows the run wrote below the score threshold (``--min-score``,
  ``passes_threshold`` 0) are hidden in QGIS by default; one left in place is taken as background (what
  the analyst saw is the layer at the threshold; an object there that was not shown would have been drawn).
  To accept such a row, set its ``passes_threshold`` to 1 (or draw the object).
- **drawn**: a row without the run's attributes (no ``run_id``, or a copy of another row's attributes: the
  higher fid of the two): a positive. Its class is its ``class`` field, or the model's only class.
- **deleted**: a row the run wrote that is gone. The ledger says how many rows each tile wrote; the boxes
  themselves are recovered by running the run's model again on the tiles that lost rows (same model file,
  thresholds, grid and bands, checked by sha256 and scene fingerprint) and matching the rows still there by
  class and score. A deleted box is a hard negative: background, and a share of the training crops without
  objects is centred on it (``TrainConfig.hard_negative_fraction``). Where the re-run does not reproduce the
  tile's rows (another geors version), that tile's deleted boxes are unknown: the tile is still reviewed
  background, without the extra crops, and a warning names it.

The reviewed area (everything outside it is never trained on, neither as object nor as background): the
polygons of ``reviewed_area`` (a file given by the caller, else a layer of that name in the edited
GeoPackage); without them, the cores of the run's tiles that hold a drawn or deleted row (a tile where rows
were only moved or accepted does not count: draw the reviewed area then). Rows whose box centre lies outside
the reviewed area are not used (counted in :attr:`Corrections.counts`), and the pixels of positives crossing
its edge are kept out of the background too.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geors.errors import GeorsError, LabelError

__all__ = ["FEW_OBJECTS", "REVIEWED_LAYER", "SCORE_MATCH", "Corrections", "SceneCorrections", "correction_tiles",
           "read_corrections"]

log = logging.getLogger(__name__)

REVIEWED_LAYER = "reviewed_area"
"""Name of the polygon layer of the reviewed area inside an edited GeoPackage."""

SCORE_MATCH = 2e-3
"""A re-detected box is the same row as a row still in the layer when their classes are equal and their
scores differ by less than this (the inference form differs from run to run only in the last float bits)."""

FEW_OBJECTS = 20
"""Fewer objects (kept + drawn) in the reviewed area than this get a warning: one measured round with 11 made the
model worse on average, one with 34 better (docs/qgis.md)."""

_FIELDS = ("run_id", "tile_id", "scene", "score", "class", "passes_threshold")


@dataclass
class SceneCorrections:
    """One scene's corrections, in the scene's pixels (xyxy boxes)."""

    name: str
    path: str
    positives: np.ndarray
    positive_classes: list[str]
    negatives: np.ndarray
    reviewed: Any  # shapely geometry in scene pixels: where every object is labelled
    excluded: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # positives outside it, kept off


@dataclass
class Corrections:
    """What :func:`read_corrections` found.

    Attributes:
        source: the edited GeoPackage.
        model: the model file the run used (the one to fine-tune by default).
        model_sha256: its recorded sha256.
        classes: the model's class names.
        tile_size, overlap, bands: the run's tile grid and band selection.
        scenes: per scene (only those with reviewed area).
        counts: ``kept``, ``drawn``, ``deleted``, ``kept_below_threshold`` (background), ``deleted_unknown``
            (deletions whose boxes the re-run could not recover), ``outside_reviewed`` (rows not used),
            ``drawn_outside_scenes``.
        reviewed_from: where the reviewed area came from (a file, the layer, or the edited tiles).
        notes: warnings for the user (also logged).
    """

    source: Path
    model: str
    model_sha256: str | None
    classes: list[str]
    tile_size: int
    overlap: int
    bands: list[int] | None
    scenes: list[SceneCorrections]
    counts: dict[str, int]
    reviewed_from: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the file, the model, the counts and where the reviewed area came from."""
        return {"corrections": str(self.source), "model": self.model, "model_sha256": self.model_sha256,
                "counts": dict(self.counts), "reviewed_area": self.reviewed_from,
                "scenes": [s.path for s in self.scenes], "notes": list(self.notes)}


# ----------------------------------------------------------------------------- reading the edited file
def _refuse(path: Path, what: str) -> LabelError:
    return LabelError(f"{path}: {what}")


def _runs_and_ledger(path: Path) -> tuple[dict[str, dict], list[tuple]]:
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _refuse(path, f"cannot be opened as a GeoPackage ({exc}).") from None
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"geors_runs", "geors_tiles", "detections"} <= tables:
            raise _refuse(path, "is not the output of a geors run (no geors_runs / geors_tiles / detections "
                                "tables): give the GeoPackage `geors detect` or `geors run` wrote, with the "
                                "detections layer edited in place.")
        runs = {}
        cur = con.execute('SELECT * FROM "geors_runs"')
        names = [d[0] for d in cur.description]
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            for key in ("config", "models"):
                try:
                    row[key] = json.loads(row[key] or "{}")
                except (TypeError, ValueError):
                    row[key] = {}
            runs[row["run_id"]] = row
        ledger = con.execute('SELECT scene, tile_id, run_id, n_detections, col_off, row_off, width, height '
                             "FROM \"geors_tiles\" WHERE status = 'done'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, f"is not a GeoPackage ({exc}): give the file `geors detect` or `geors run` wrote, its "
                            "detections layer edited in place.") from None
    finally:
        con.close()
    return runs, ledger


def _read_layer(path: Path, layer: str):
    import pyogrio

    try:
        gdf = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
    except Exception as exc:  # pyogrio raises several GDAL-backed types
        raise _refuse(path, f"cannot read the layer {layer!r} ({exc}).") from None
    return gdf


def _scene_of_run(path: Path, rec: dict, relocated: dict[str, str]) -> tuple[str, Any]:
    """The scene's path now (``relocated`` by file name, else as recorded), opened and checked by fingerprint."""
    from geors.errors import GeoreferenceError, SceneReadError
    from geors.inputs import scene_fingerprint
    from geors.raster import open_scene

    name = str(rec.get("name"))
    where = relocated.get(name) or rec.get("path")
    if not where or not Path(where).is_file():
        raise _refuse(path, f"the run's scene {name} is not at {where} any more; give its path now with "
                            f"--scene (matched by file name).")
    bands = rec.get("bands")
    try:
        scene = open_scene(where, bands=bands)
    except (SceneReadError, GeoreferenceError) as exc:
        raise _refuse(path, f"the run's scene {where} cannot be read: {exc}") from None
    if rec.get("fingerprint") and rec.get("fingerprint_version") == 2 and scene_fingerprint(scene) != rec["fingerprint"]:
        raise _refuse(path, f"{where} is not the raster the run read (its content changed since the run; "
                            "fingerprints differ): the corrections were drawn on other pixels. Give the scene "
                            "the run used (--scene).")
    return str(where), scene


def _to_pixels(geoms: np.ndarray, crs, scene, path: Path) -> np.ndarray:
    """Geometries in ``crs`` -> their xyxy bounds in ``scene`` pixels (NaN rows for missing geometries)."""
    import shapely

    from geors.crs import same_crs
    from geors.io.box_labels import reproject_labels

    geoms = np.asarray(geoms, dtype=object)
    ok = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    out = np.full((len(geoms), 4), np.nan)
    if not ok.any():
        return out
    g = geoms[ok]
    if not same_crs(crs, scene.crs):
        g = reproject_labels(path, g, crs, scene.crs)
    inv = ~scene.transform
    out[ok] = shapely.bounds(shapely.transform(g, lambda xy: np.column_stack(
        [inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f])))
    return out


def _polygons_in_pixels(geoms: np.ndarray, crs, scene, path: Path):
    """Polygons in ``crs`` -> one shapely geometry in ``scene`` pixels (clipped to the scene), or None."""
    import shapely

    from geors.crs import same_crs
    from geors.io.box_labels import reproject_labels

    geoms = np.asarray([g for g in geoms if g is not None and not shapely.is_empty(g)], dtype=object)
    geoms = geoms[np.isin(shapely.get_type_id(geoms), [3, 6])] if len(geoms) else geoms  # (multi)polygons
    if not len(geoms):
        return None
    if not same_crs(crs, scene.crs):
        geoms = reproject_labels(path, geoms, crs, scene.crs)
    inv = ~scene.transform
    px = shapely.transform(geoms, lambda xy: np.column_stack(
        [inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f]))
    area = shapely.intersection(shapely.union_all(shapely.make_valid(px)), shapely.box(0, 0, scene.width,
                                                                                     scene.height))
    return None if shapely.is_empty(area) or shapely.area(area) <= 0 else area


def _reviewed_polygons(path: Path, reviewed_area: str | os.PathLike | None):
    """(geometries, crs, description) of the reviewed area, or None when there is none."""
    import pyogrio

    if reviewed_area is not None:
        file, _, layer = os.fspath(reviewed_area).partition("|layername=")  # QGIS's FILE|layername=NAME
        src = Path(file)
        if not src.exists():
            raise LabelError(f"{src}: --reviewed-area file not found.")
        try:
            gdf = pyogrio.read_dataframe(src, layer=layer or None)
        except Exception as exc:
            raise LabelError(f"{src}: --reviewed-area cannot be read as a vector file ({exc}).") from None
        what = str(src)
    else:
        layers = [str(n) for n, _ in pyogrio.list_layers(path)]
        if REVIEWED_LAYER not in layers:
            return None
        gdf = _read_layer(path, REVIEWED_LAYER)
        src, what = path, f"layer {REVIEWED_LAYER} of {path.name}"
    if len(gdf) == 0:
        if reviewed_area is not None:
            raise LabelError(f"{src}: --reviewed-area has no polygons; draw the area you reviewed.")
        return None
    if gdf.crs is None:
        raise LabelError(f"{src}: the reviewed area has no CRS, so it cannot be placed on the scenes; assign "
                         "the CRS it was drawn in (e.g. ogr2ogr -a_srs EPSG:XXXX).")
    return gdf.geometry.to_numpy(), gdf.crs, what


def _tile_runs(runs: dict[str, dict], run_ids: Sequence[str]) -> dict[str, dict]:
    """The detection runs among ``run_ids``, with what a re-run needs (model, thresholds, grid, scenes)."""
    out = {}
    for rid in run_ids:
        rec = runs.get(rid)
        if rec is None:
            continue
        models, cfg = rec.get("models") or {}, rec.get("config") or {}
        if not models.get("model_path"):
            continue
        tiling = (cfg.get("config") or {}).get("tiling") or {}
        detect = (cfg.get("config") or {}).get("detect") or {}
        out[rid] = {"model": models["model_path"], "model_sha256": models.get("model_sha256"),
                    "classes": list(models.get("classes") or []), "gate_threshold": models.get("gate_threshold"),
                    "use_gate": detect.get("use_gate", True), "score_threshold": models.get("score_threshold"),
                    "min_score": models.get("min_score"), "tile_size": int(cfg.get("tile_size") or 640),
                    "overlap": int(cfg.get("overlap") if cfg.get("overlap") is not None else 128),
                    "bands": tiling.get("bands"), "scenes": {s["name"]: {**s, "bands": tiling.get("bands")}
                                                             for s in cfg.get("scenes") or []}}
    return out


def _redetect(run: dict, scene, tile_ids: Sequence[str]) -> dict[str, list[tuple[np.ndarray, str, float]]]:
    """The run's rows of ``tile_ids`` written again: {tile_id: [(box in scene pixels, class, score)]}."""
    import torch

    from geors.config import DetectConfig
    from geors.pipeline import run_batch
    from geors.stages import DetectStage
    from geors.tiling import TileGrid

    stage = DetectStage(DetectConfig(model=run["model"], gate_threshold=run["gate_threshold"] if run["use_gate"]
                                     else None, use_gate=bool(run["use_gate"]),
                                     score_threshold=run["score_threshold"], min_score=run["min_score"]),
                        None, device="cpu")
    grid = TileGrid(scene, run["tile_size"], run["overlap"])
    wanted = set(tile_ids)
    tiles = [t for t in grid if t.id in wanted]
    out: dict[str, list] = {}
    for res in run_batch(scene, tiles, None, stage, max(torch.get_num_threads(), 1)):
        win = res.window
        out[res.tile_id] = [(np.asarray(d.box_px, np.float64) + [win.col_off, win.row_off, win.col_off,
                                                                  win.row_off], d.class_name, float(d.score))
                            for d in res.detections]
    return out


def read_corrections(path: str | os.PathLike, reviewed_area: str | os.PathLike | None = None,
                     scenes: Sequence[str | os.PathLike] = (), layer: str = "detections") -> Corrections:
    """Read an edited detections GeoPackage against what its run wrote (see the module docstring for the rules).

    Args:
        path: the GeoPackage ``geors detect`` / ``geors run`` wrote, its ``detections`` layer edited in place.
        reviewed_area: a polygon file of the area reviewed (any OGR format and CRS; ``FILE|layername=NAME`` for
            one layer of several); None = the layer
            ``reviewed_area`` of ``path`` if it exists, else the cores of the tiles holding an edit.
        scenes: where the run's scenes are now, when they moved (matched by file name).
        layer: the edited layer.

    Raises:
        LabelError: not a geors output, no run record, nothing corrected, a scene missing or changed, a
            reviewed area without CRS or outside every scene, drawn boxes without a class the model knows.
    """
    import shapely

    from geors.models.registry import get_model
    from geors.paths import sha256_file
    from geors.tiling import TileGrid

    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: --corrections file not found.")
    runs, ledger = _runs_and_ledger(path)
    gdf = _read_layer(path, layer)
    missing_fields = [f for f in _FIELDS if f not in gdf.columns]
    if missing_fields:
        raise _refuse(path, f"the layer {layer!r} lacks the fields {missing_fields} geors writes; give the "
                            "detections layer of a geors output (edited, not re-created).")
    if gdf.crs is None:
        raise _refuse(path, f"the layer {layer!r} has no CRS; geors writes one, so this layer was re-created. "
                            "Edit the layer geors wrote.")
    rid = gdf["run_id"].where(gdf["run_id"].notna(), None).to_numpy(object)
    fids = gdf.index.to_numpy(np.int64)
    run_ids = sorted({r for r in rid if r is not None and r in runs})
    det_runs = _tile_runs(runs, run_ids)
    if not det_runs:
        raise _refuse(path, "no row of the layer comes from a recorded detection run (run_id and the run's "
                            "model in geors_runs); give the output of `geors detect` or `geors run`.")
    shas = {r["model_sha256"] for r in det_runs.values()}
    if len(shas) > 1:
        raise _refuse(path, f"its rows come from runs with different models ({sorted(det_runs)}); correct the "
                            "output of one model.")
    first = det_runs[run_ids[0]] if run_ids[0] in det_runs else next(iter(det_runs.values()))
    model_path = first["model"]
    try:
        model_file = str(get_model(model_path))
    except GeorsError:
        raise _refuse(path, f"the run's model {model_path} is not there any more; give the model to "
                            "fine-tune with --init-from.") from None
    classes = first["classes"]
    notes: list[str] = []

    # original rows still there vs drawn ones (a copy of a row's attributes: the higher fid is drawn)
    is_orig = np.array([r in det_runs for r in rid], bool)
    is_orig &= gdf["tile_id"].notna().to_numpy() & gdf["score"].notna().to_numpy()
    seen: set[tuple] = set()
    for i in np.argsort(fids, kind="stable"):
        if is_orig[i]:
            key = (rid[i], gdf["scene"].iat[i], gdf["tile_id"].iat[i], round(float(gdf["score"].iat[i]), 6))
            if key in seen:
                is_orig[i] = False
            seen.add(key)
    drawn = ~is_orig

    # the scenes of the runs, opened and checked
    relocated = {Path(s).name: os.fspath(s) for s in scenes}
    opened: dict[str, tuple[str, Any, dict]] = {}  # scene name -> (path, scene, run)
    for r in det_runs.values():
        for name, rec in r["scenes"].items():
            if name not in opened:
                where, scene = _scene_of_run(path, rec, relocated)
                opened[name] = (where, scene, r)
    unknown = set(relocated) - set(opened)
    if unknown:
        raise LabelError(f"--scene {', '.join(sorted(unknown))}: not a scene of the run that wrote {path} "
                         f"(its scenes: {', '.join(sorted(opened))}).")

    # boxes in each scene's pixels
    geoms = gdf.geometry.to_numpy()
    scene_of = np.array([gdf["scene"].iat[i] if is_orig[i] else None for i in range(len(gdf))], object)
    px = np.full((len(gdf), 4), np.nan)
    for name, (_, scene, _) in opened.items():
        sel = np.flatnonzero(scene_of == name)
        if len(sel):
            px[sel] = _to_pixels(geoms[sel], gdf.crs, scene, path)
    outside_scenes = 0
    for i in np.flatnonzero(drawn):  # a drawn row belongs to the scene holding its centre
        for name, (_, scene, _) in opened.items():
            b = _to_pixels(geoms[i:i + 1], gdf.crs, scene, path)[0]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if np.isfinite(cx) and 0 <= cx < scene.width and 0 <= cy < scene.height and b[2] > b[0] and b[3] > b[1]:
                scene_of[i], px[i] = name, b
                break
        else:
            outside_scenes += 1
    if outside_scenes:
        notes.append(f"{outside_scenes} drawn row(s) lie outside every scene of the run (or have no area): not "
                     "used")
    names = gdf["class"].to_numpy(object)
    lower = {c.lower(): c for c in classes}
    drawn_cls = []
    for i in np.flatnonzero(drawn & (scene_of != None)):  # noqa: E711 (numpy elementwise)
        c = names[i]
        if c is None or (isinstance(c, float) and np.isnan(c)) or str(c).strip() == "":
            if len(classes) != 1:
                raise _refuse(path, f"drawn row fid {fids[i]} has no class; fill its 'class' field with one of "
                                    f"the model's classes {classes}.")
            c = classes[0]
        if str(c).lower() not in lower:
            raise _refuse(path, f"drawn row fid {fids[i]} has class {c!r}, which the model does not know "
                                f"({classes}); fix its 'class' field.")
        names[i] = lower[str(c).lower()]
        drawn_cls.append(i)

    # deletions: the ledger's count per tile vs the rows left; their boxes from a re-run of those tiles
    kept_by_tile: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(is_orig):
        kept_by_tile.setdefault((rid[i], gdf["scene"].iat[i], gdf["tile_id"].iat[i]), []).append(int(i))
    windows: dict[tuple, tuple] = {}
    missing: dict[tuple, int] = {}
    for scene_name, tile_id, run_id, n, *win in ledger:
        if run_id not in det_runs:
            continue
        key = (run_id, scene_name, tile_id)
        windows[(scene_name, tile_id)] = tuple(win)
        gone = int(n or 0) - len(kept_by_tile.get(key, []))
        if gone > 0:
            missing[key] = gone
    deleted: dict[str, list[np.ndarray]] = {}
    deleted_tiles: dict[str, set[str]] = {}
    n_deleted = sum(missing.values())
    n_unknown = 0
    by_run_scene: dict[tuple, list[str]] = {}
    for (run_id, scene_name, tile_id) in missing:
        by_run_scene.setdefault((run_id, scene_name), []).append(tile_id)
        deleted_tiles.setdefault(scene_name, set()).add(tile_id)
    for (run_id, scene_name), tile_ids in by_run_scene.items():
        if scene_name not in opened:
            n_unknown += sum(missing[(run_id, scene_name, t)] for t in tile_ids)
            continue
        run = det_runs[run_id]
        if run["model_sha256"] and sha256_file(get_model(run["model"])) != run["model_sha256"]:
            n = sum(missing[(run_id, scene_name, t)] for t in tile_ids)
            n_unknown += n
            notes.append(f"the run's model file {run['model']} changed since the run: the {n} deleted box(es) "
                         "cannot be recovered; their tiles are still reviewed background")
            continue
        again = _redetect(run, opened[scene_name][1], tile_ids)
        for tile_id in tile_ids:
            rows = list(again.get(tile_id, []))
            for i in kept_by_tile.get((run_id, scene_name, tile_id), []):
                s, c = float(gdf["score"].iat[i]), str(names[i])
                cand = [k for k, (_, rc, rs) in enumerate(rows) if rc == c and abs(rs - s) < SCORE_MATCH]
                if cand:
                    rows.pop(min(cand, key=lambda k: abs(rows[k][2] - s)))
            want = missing[(run_id, scene_name, tile_id)]
            if len(rows) != want:
                n_unknown += want
                notes.append(f"{scene_name} tile {tile_id}: running the model again gives {len(rows)} row(s) not "
                             f"in the layer where {want} were deleted (another geors version?): its deleted "
                             "boxes are not used as hard negatives; the tile is still reviewed background")
                continue
            deleted.setdefault(scene_name, []).extend(b for b, _, _ in rows)

    if not n_deleted and not len(drawn_cls):
        raise _refuse(path, f"nothing was corrected: every row the run wrote is still in the layer {layer!r} and "
                            "none was drawn. Delete the false positives and draw the missed objects (then save "
                            "the layer), and run this again.")

    # the reviewed area, per scene in pixels
    given = _reviewed_polygons(path, reviewed_area)
    reviewed: dict[str, Any] = {}
    if given is not None:
        rgeoms, rcrs, reviewed_from = given
        for name, (_, scene, _) in opened.items():
            area = _polygons_in_pixels(rgeoms, rcrs, scene, Path(reviewed_from))
            if area is not None:
                reviewed[name] = area
        if not reviewed:
            raise LabelError(f"{reviewed_from}: the reviewed area overlaps none of the run's scenes "
                             f"({', '.join(sorted(opened))}); wrong CRS, or polygons drawn elsewhere?")
    else:
        reviewed_from = "the cores of the tiles holding a drawn or deleted row"
        for name, (_, scene, run) in opened.items():
            grid = TileGrid(scene, run["tile_size"], run["overlap"])
            ids = set(deleted_tiles.get(name, ()))
            for i in drawn_cls:
                if scene_of[i] == name:
                    cx, cy = (px[i, 0] + px[i, 2]) / 2, (px[i, 1] + px[i, 3]) / 2
                    ids |= {t.id for t in grid if t.core.col_off <= cx < t.core.col_off + t.core.width
                            and t.core.row_off <= cy < t.core.row_off + t.core.height}
            cores = [shapely.box(t.core.col_off, t.core.row_off, t.core.col_off + t.core.width,
                                 t.core.row_off + t.core.height) for t in grid if t.id in ids]
            if cores:
                reviewed[name] = shapely.union_all(cores)

    counts = {"kept": 0, "drawn": 0, "deleted": 0, "kept_below_threshold": 0, "deleted_unknown": n_unknown,
              "outside_reviewed": 0, "drawn_outside_scenes": outside_scenes}
    passes = gdf["passes_threshold"].to_numpy(object)
    out_scenes = []
    for name, (where, _scene, _) in opened.items():
        area = reviewed.get(name)
        if area is None:
            continue
        shapely.prepare(area)
        pos, pos_cls, excl = [], [], []
        for i in np.flatnonzero((scene_of == name) & np.isfinite(px[:, 0])):
            b = px[i]
            inside = area.contains(shapely.Point((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
            positive = drawn[i] or (passes[i] is not None and not (isinstance(passes[i], float)
                                                                    and np.isnan(passes[i])) and int(passes[i]) == 1)
            if not inside:
                counts["outside_reviewed"] += 1
                if positive:
                    excl.append(b)
                continue
            if positive:
                pos.append(b)
                pos_cls.append(str(names[i]))
                counts["drawn" if drawn[i] else "kept"] += 1
            else:
                counts["kept_below_threshold"] += 1
        neg = []
        for b in deleted.get(name, []):
            if area.contains(shapely.Point((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)):
                neg.append(b)
                counts["deleted"] += 1
            else:
                counts["outside_reviewed"] += 1
        out_scenes.append(SceneCorrections(name, where, np.asarray(pos, np.float64).reshape(-1, 4), pos_cls,
                                           np.asarray(neg, np.float64).reshape(-1, 4), area,
                                           np.asarray(excl, np.float64).reshape(-1, 4)))
    if not out_scenes:
        raise _refuse(path, "no reviewed area lies on the run's scenes.")
    n_objects = counts["kept"] + counts["drawn"]
    if n_objects < FEW_OBJECTS:
        notes.append(f"only {n_objects} objects in the reviewed area: in the measured rounds (docs/qgis.md, 'Review, "
                     "correct, retrain') 11 corrected objects made the model worse on average, 34 better; review "
                     "more of the scene before retraining, and check the new model on a part you did not correct")
    for note in notes:
        log.warning("%s: %s", path, note)
    return Corrections(source=path, model=model_file, model_sha256=first["model_sha256"], classes=classes,
                       tile_size=first["tile_size"], overlap=first["overlap"], bands=first["bands"],
                       scenes=out_scenes, counts=counts, reviewed_from=reviewed_from, notes=notes)


# ----------------------------------------------------------------------------- training tiles
def correction_tiles(corr: Corrections, tile_size: int | None = None, overlap: int | None = None,
                     classes: Sequence[str] | None = None) -> tuple[list, list[str], dict[str, Any]]:
    """Training tiles of the reviewed area: the run's grid tiles cut to the reviewed area's extent in them,
    pixels outside the reviewed area (and under positives whose centre lies outside it) set to 0, positives as
    boxes and deleted boxes as ``negatives`` (:class:`geors.train.crops.TrainTile`).

    Returns:
        ``(tiles, classes, info)`` as :func:`geors.train.scene_tiles.tiles_from_scenes` (``info["corrections"]`` holds
        :meth:`Corrections.summary`).
    """
    import rasterio.features
    import shapely
    from affine import Affine

    from geors.raster import open_scene
    from geors.tiling import TileGrid
    from geors.train.crops import MIN_VISIBLE, TrainTile

    size = int(tile_size or corr.tile_size)
    ov = int(corr.overlap if overlap is None else overlap)
    classes = sorted(classes or corr.classes)
    index = {c: i for i, c in enumerate(classes)}
    tiles: list[TrainTile] = []
    sources, gsd = [], None
    for k, sc in enumerate(corr.scenes):
        scene = open_scene(sc.path, bands=corr.bands)
        if gsd is None and scene.crs is not None and scene.crs.is_projected:
            gsd = float(abs(scene.transform.a) * scene.crs.linear_units_factor[1])
        allowed = shapely.difference(sc.reviewed, shapely.union_all(
            [shapely.box(*b) for b in sc.excluded])) if len(sc.excluded) else sc.reviewed
        ids = np.array([index[c] for c in sc.positive_classes], np.int64)
        n_tiles = 0
        for t in TileGrid(scene, size, ov):
            w = t.window
            part = shapely.intersection(allowed, shapely.box(w.col_off, w.row_off, w.col_off + w.width,
                                                             w.row_off + w.height))
            if shapely.is_empty(part) or shapely.area(part) < 1:
                continue
            x0, y0, x1, y1 = (int(np.floor(v)) for v in shapely.bounds(part))
            x1, y1 = int(np.ceil(shapely.bounds(part)[2])), int(np.ceil(shapely.bounds(part)[3]))
            mask = rasterio.features.rasterize([part], out_shape=(y1 - y0, x1 - x0),
                                               transform=Affine.translation(x0, y0), dtype="uint8") > 0
            if not mask.any():
                continue
            img = scene.read_tile(t).image[:, y0 - w.row_off:y1 - w.row_off, x0 - w.col_off:x1 - w.col_off]
            img = np.where(mask[None], img, 0.0).astype(np.float32)
            b = sc.positives - [x0, y0, x0, y0]
            cl = np.clip(b, 0, [x1 - x0, y1 - y0, x1 - x0, y1 - y0])
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            vis = np.clip(cl[:, 2] - cl[:, 0], 0, None) * np.clip(cl[:, 3] - cl[:, 1], 0, None)
            keep = (area > 0) & (vis > 0) & (vis >= MIN_VISIBLE * area)
            # each negative once: in the tile whose core holds its centre (the tiles overlap)
            nb = sc.negatives - [x0, y0, x0, y0]
            ncx, ncy = (sc.negatives[:, 0] + sc.negatives[:, 2]) / 2, (sc.negatives[:, 1] + sc.negatives[:, 3]) / 2
            core = t.core
            nkeep = ((ncx >= max(core.col_off, x0)) & (ncx < min(core.col_off + core.width, x1))
                     & (ncy >= max(core.row_off, y0)) & (ncy < min(core.row_off + core.height, y1)))
            tiles.append(TrainTile(img, cl[keep].astype(np.float32), ids[keep], f"{sc.name}:{t.id}:reviewed",
                                   source=f"{k}:{sc.path}", origin=(x0, y0),
                                   negatives=nb[nkeep].astype(np.float32) if nkeep.any() else None))
            n_tiles += 1
        sources.append({"scene": sc.path, "labels": str(corr.source), "n_boxes": int(len(sc.positives)),
                        "n_negatives": int(len(sc.negatives)), "n_tiles": n_tiles})
        log.info("%s: %d positives, %d deleted boxes (hard negatives) in %d reviewed tile part(s)", sc.name,
                 len(sc.positives), len(sc.negatives), n_tiles)
    info = {"gsd_m": gsd, "tile_size": size, "overlap": ov, "band_indexes": corr.bands, "sources": sources,
            "corrections": corr.summary()}
    return tiles, classes, info
