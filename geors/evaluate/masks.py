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
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["miou_instances", "evaluate_mask_files"]


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
) -> dict:
    """mIoU_I / mIoU_P between two vector files of instance polygons.

    The truth layer is reprojected to the CRS of the predictions. A GeoPackage
    written by geors has its masks in the ``instances`` layer; when
    ``pred_layer`` is not in the file, its first layer is used.

    Args:
        pred_path: predicted instance polygons (any OGR vector file).
        truth_path: true outlines (any OGR vector file, any CRS).
        pred_layer, truth_layer: layer names (None = first layer).
        min_iou: see :func:`miou_instances`.

    Returns:
        The :func:`miou_instances` dict without ``pairs``, plus the file names.

    Raises:
        LabelError: unreadable files, layers without CRS when CRSs differ.
    """
    pred = _read_polys(pred_path, pred_layer)
    truth = _read_polys(truth_path, truth_layer)
    if pred.crs is not None and truth.crs is not None and not pred.crs.equals(truth.crs):
        truth = truth.to_crs(pred.crs)
    res = miou_instances(list(pred.geometry), list(truth.geometry), min_iou=min_iou)
    res.pop("pairs")
    res.update({"pred": str(pred_path), "truth": str(truth_path), "min_iou": min_iou})
    return res


def _read_polys(path, layer):
    import pyogrio

    from geors.errors import LabelError

    try:
        layers = [n for n, _ in pyogrio.list_layers(path)]
        if layer is not None and layer not in layers:
            layer = None
        gdf = pyogrio.read_dataframe(path, layer=layer)
    except Exception as exc:  # GDAL errors come in several classes
        raise LabelError(f"{path}: cannot read it as a vector file of polygons ({exc}).") from None
    if "geometry" not in gdf.columns:
        raise LabelError(f"{path}: layer has no geometry column; pass polygons.")
    return gdf
