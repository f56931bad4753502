"""Instance mask metrics of SAMRS: mIoU_I and mIoU_P.

SAMRS defines, over instances i with intersection I_i and union U_i between
the predicted and the true mask:

- ``mIoU_I = mean_i(I_i / U_i)`` (every instance weighs the same),
- ``mIoU_P = sum_i I_i / sum_i U_i`` (every pixel weighs the same; large
  objects dominate).

Matching (geors' choice; SAMRS pairs masks with the box that prompted them):
predictions are matched one-to-one to truth polygons greedily by descending
IoU, pairs with IoU <= ``min_iou`` are not matched. A truth instance without
a match counts with I = 0 and U = its own area (so missed objects lower both
metrics); unmatched predictions are reported (``n_unmatched_pred``) but do not
enter the means, as in SAMRS where every mask answers a given box.

Areas are computed in the polygons' CRS units (use a projected CRS, or pass
both layers in the same geographic CRS when only ratios matter: the ratios are
then approximate).

Truth for a region, predictions for a scene: a truth file often covers more
than the scene that was processed (a survey's outlines, one of its images).
Truth outside the scene cannot be found and would count as missed, so
:func:`evaluate_mask_files` restricts truth to the scene footprint: each true
outline is clipped to the footprint and kept when at least ``min_inside``
(default half) of its area lies inside. The footprint is the union of the
scenes' bounds (``scenes=``, the CLI's ``--scene``), else of the scenes that
geors recorded in the prediction GeoPackage's ``geors_runs`` table when those
files can be opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geors.evaluate.tables import truth_outlines

log = logging.getLogger(__name__)

__all__ = ["miou_instances", "evaluate_mask_files", "scene_footprint", "restrict_to_footprint", "recorded_scenes"]


def miou_instances(pred_polys: Sequence, truth_polys: Sequence, min_iou: float = 0.0) -> dict:
    """mIoU_I and mIoU_P between predicted and true instance polygons.

    Args:
        pred_polys: shapely (Multi)Polygons, predictions.
        truth_polys: shapely (Multi)Polygons, ground truth, same CRS.
        min_iou: a pair needs IoU strictly above this to match.

    Returns:
        Dict with ``miou_i``, ``miou_p`` (None when there is no truth),
        ``n_truth``, ``n_pred``, ``n_matched``, ``n_unmatched_pred``,
        ``n_missed_truth``, ``matched_miou_i`` (mean IoU over matched pairs
        only) and ``pairs`` (list of ``(pred_index, truth_index, iou)``).
    """
    import shapely
    from shapely import STRtree

    preds = [p if (p is not None and not p.is_empty) else None for p in pred_polys]
    truths = [t if (t is not None and not t.is_empty) else None for t in truth_polys]
    pidx = [i for i, p in enumerate(preds) if p is not None]
    tidx = [j for j, t in enumerate(truths) if t is not None]
    candidates: list[tuple[float, int, int, float, float]] = []
    if pidx and tidx:
        tree = STRtree([truths[j] for j in tidx])
        pgeoms = np.array([preds[i] for i in pidx], dtype=object)
        qi, qj = tree.query(pgeoms, predicate="intersects")
        if len(qi):
            a = pgeoms[qi]
            b = np.array([truths[tidx[k]] for k in qj], dtype=object)
            inter = shapely.area(shapely.intersection(a, b))
            union = shapely.area(a) + shapely.area(b) - inter
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = np.where(union > 0, inter / union, 0.0)
            for k in range(len(qi)):
                if iou[k] > min_iou:
                    candidates.append((float(iou[k]), pidx[qi[k]], tidx[qj[k]], float(inter[k]), float(union[k])))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_p: set[int] = set()
    used_t: dict[int, tuple[int, float, float, float]] = {}
    for iou, i, j, inter, union in candidates:
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t[j] = (i, iou, inter, union)
    ious, inters, unions = [], [], []
    for j in tidx:
        if j in used_t:
            _, iou, inter, union = used_t[j]
        else:
            iou, inter, union = 0.0, 0.0, float(truths[j].area)
        ious.append(iou)
        inters.append(inter)
        unions.append(union)
    matched = [used_t[j][1] for j in tidx if j in used_t]
    return {
        "miou_i": float(np.mean(ious)) if ious else None,
        "miou_p": float(np.sum(inters) / np.sum(unions)) if unions and np.sum(unions) > 0 else None,
        "matched_miou_i": float(np.mean(matched)) if matched else None,
        "n_truth": len(tidx),
        "n_pred": len(pidx),
        "n_matched": len(used_t),
        "n_unmatched_pred": len(pidx) - len(used_p),
        "n_missed_truth": len(tidx) - len(used_t),
        "pairs": sorted((v[0], j, v[1]) for j, v in used_t.items()),
    }


def evaluate_mask_files(
    pred_path: str | os.PathLike,
    truth_path: str | os.PathLike,
    pred_layer: str | None = "instances",
    truth_layer: str | None = None,
    min_iou: float = 0.0,
    scenes: Sequence[str | os.PathLike] | None = None,
    restrict: bool = True,
    min_inside: float = 0.5,
) -> dict:
    """mIoU_I / mIoU_P between two vector files of instance polygons.

    The truth layer is reprojected to the CRS of the predictions and, with
    ``restrict``, limited to the scene footprint (module docstring). A
    GeoPackage written by geors has its masks in the ``instances`` layer; when
    ``pred_layer`` is not in the file, its first layer is used.

    Args:
        pred_path: predicted instance polygons (any OGR vector file).
        truth_path: true outlines (any OGR vector file, any CRS).
        pred_layer, truth_layer: layer names (None = first layer).
        min_iou: see :func:`miou_instances`.
        scenes: rasters whose footprint bounds the truth; None = the scenes
            recorded in ``pred_path``'s ``geors_runs`` table (when they exist).
        restrict: False evaluates against all of the truth.
        min_inside: least fraction of a true outline's area inside the
            footprint for it to count.

    Returns:
        The :func:`miou_instances` dict without ``pairs``, plus the file names,
        ``footprint_scenes`` (the rasters used, empty when none) and
        ``n_truth_outside`` (outlines left out).

    Raises:
        LabelError: unreadable files, layers without CRS when CRSs differ.
        SceneReadError: a raster in ``scenes`` cannot be opened.
    """
    pred = _read_polys(pred_path, pred_layer)
    truth = truth_outlines(_read_polys(truth_path, truth_layer), truth_path)
    if pred.crs is not None and truth.crs is not None and not pred.crs.equals(truth.crs):
        truth = truth.to_crs(pred.crs)
    used: list[str] = []
    n_outside = 0
    truth_geoms = list(truth.geometry)
    if restrict:
        if scenes is None:
            scenes = [p for p in recorded_scenes(pred_path) if Path(p).exists()]
        if scenes:
            footprint = scene_footprint(scenes, pred.crs)
            truth_geoms, n_outside = restrict_to_footprint(truth_geoms, footprint, min_inside)
            used = [str(p) for p in scenes]
        elif len(truth) and len(pred):
            t, p = truth.total_bounds, pred.total_bounds
            if (t[2] - t[0]) * (t[3] - t[1]) > 4 * (p[2] - p[0]) * (p[3] - p[1]):
                log.warning("%s covers a much larger area than %s; pass the scene (--scene) so that truth "
                            "outside it does not count as missed.", truth_path, pred_path)
    res = miou_instances(list(pred.geometry), truth_geoms, min_iou=min_iou)
    res.pop("pairs")
    res.update({"pred": str(pred_path), "truth": str(truth_path), "min_iou": min_iou,
                "footprint_scenes": used, "n_truth_outside": n_outside})
    return res


def scene_footprint(scenes: Sequence[str | os.PathLike], crs=None):
    """Union of the rasters' bounds as a shapely geometry in ``crs`` (default: the first raster's CRS).

    Edges are densified (1/64 of the side) before reprojection so a footprint
    stays faithful across CRSs.
    """
    import geopandas as gpd
    import rasterio
    import shapely
    from shapely.geometry import box

    from geors.errors import SceneReadError

    parts = []
    for p in scenes:
        try:
            with rasterio.open(p) as src:
                b, src_crs = src.bounds, src.crs
        except rasterio.errors.RasterioIOError as exc:
            raise SceneReadError(f"{p}: cannot open it as a raster ({exc}); check the --scene path.") from None
        poly = shapely.segmentize(box(*b), max(b.right - b.left, b.top - b.bottom) / 64)
        gs = gpd.GeoSeries([poly], crs=src_crs)
        if crs is None:
            crs = src_crs
        elif src_crs is not None and not gs.crs.equals(crs):
            gs = gs.to_crs(crs)
        parts.append(gs.iloc[0])
    return shapely.union_all(parts)


def restrict_to_footprint(truth_polys: Sequence, footprint, min_inside: float = 0.5) -> tuple[list, int]:
    """True outlines clipped to ``footprint``; those with less than ``min_inside`` of their area inside are left out.

    Returns:
        ``(kept, n_left_out)``: the clipped geometries and how many were left out.
    """
    kept, out = [], 0
    for g in truth_polys:
        if g is None or g.is_empty:
            continue
        inside = g.intersection(footprint)
        if g.area > 0 and inside.area / g.area >= min_inside:
            kept.append(inside)
        else:
            out += 1
    return kept, out


def recorded_scenes(pred_path: str | os.PathLike) -> list[str]:
    """Scene paths recorded in a geors GeoPackage's ``geors_runs`` table (empty for other files)."""
    import json
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{Path(pred_path)}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT config FROM geors_runs").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []
    out: list[str] = []
    for (cfg,) in rows:
        try:
            scenes = json.loads(cfg or "{}").get("scenes") or []
        except (ValueError, AttributeError):
            continue
        for sc in scenes:  # a path, or (newer runs) a dict with the path among the scene's fingerprint
            path = sc.get("path") if isinstance(sc, dict) else sc
            if isinstance(path, str) and path not in out:
                out.append(path)
    return out


def _read_polys(path, layer):
    import pyogrio

    from geors.errors import LabelError

    try:
        layers = [n for n, _ in pyogrio.list_layers(path)]
        if layer is not None and layer not in layers:
            layer = None
        gdf = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
    except Exception as exc:  # GDAL errors come in several classes
        raise LabelError(f"{path}: cannot read it as a vector file of polygons ({exc}).") from None
    if "geometry" not in gdf.columns:
        raise LabelError(f"{path}: layer has no geometry column; pass polygons.")
    return gdf
