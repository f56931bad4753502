"""Detection metrics: AP50, COCO-style AP, recall/precision at a score threshold, gate metrics.

Everything is computed with numpy (no pycocotools). The rules follow the COCO
evaluation protocol where it applies to geors:

- Matching, per class and image, per IoU threshold ``t``: detections are taken
  in descending score order (stable sort, so ties keep input order); each one
  is matched to the still-unmatched ground-truth box with the highest IoU
  ``>= t``. A detection without such a box is a false positive; so is a
  second detection of an already matched box (duplicates count as FP).
- AP for one class and threshold: precision/recall curve over all images,
  precision made monotonically non-increasing from the right, then sampled at
  101 recall points ``0, 0.01, ..., 1`` (precision 0 where the recall is never
  reached), averaged.
- ``AP`` is the mean over ``iou_thresholds`` (default 0.50:0.95 step 0.05);
  ``AP50`` is AP at IoU 0.5. Overall AP values are the mean over classes that
  have ground truth (COCO's mAP); a class without ground truth has no AP.
- Unlike COCO there is no per-image cap on detections (COCO keeps 100 per
  image; a geors "image" is a whole scene with thousands of objects) and no
  area ranges or crowd regions.
- Recall, precision and F1 are reported at ``score_threshold`` and
  ``match_iou`` (default 0.5); the overall values pool the counts of all
  classes (micro average). For a geors GeoPackage the default threshold is
  the one the detections were written with (the run record's
  ``score_threshold``: the model's, calibrated for the best F1 on its
  validation tiles, or ``--score-threshold``), so F1/precision/recall are
  those of the boxes that pass (``passes_threshold = 1``); otherwise
  :data:`geors.config.DEFAULT_SCORE_THRESHOLD`. ``max_recall`` is the recall
  with every detection (no score threshold): the ceiling any threshold can reach.
- AP and ``max_recall`` use every written detection. A layer written without
  ``--min-score`` holds only boxes above the threshold, so its AP is capped;
  the result then says so in ``warnings`` (write it with
  ``geors detect --min-score 0.05`` for the uncapped AP).

Boxes are ``(xmin, ymin, xmax, ymax)``; any unit works (scene pixels or CRS
units) as long as predictions and truth share it, because IoU is unit-free.
Reading files and layers into boxes (CRS, class fields, label formats, the run
record and tile ledger) is :mod:`geors.evaluate.tables`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geors.config import DEFAULT_SCORE_THRESHOLD
from geors.evaluate.tables import (
    BoxTable,
    frame_box_tables,
    read_gate_ledger,
    read_layer,
    read_truth,
    recorded_score_thresholds,
    truth_outlines,
)

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "BoxTable",
    "box_iou",
    "average_precision",
    "evaluate_detections",
    "evaluate_gate",
    "gate_metrics",
    "evaluate_detection_frames",
    "evaluate_detection_files",
    "truth_outlines",
]

#: IoU thresholds of COCO's AP: 0.50, 0.55, ..., 0.95.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

_RECALL_POINTS = np.linspace(0.0, 1.0, 101)




def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between two sets of xyxy boxes.

    The numpy rule of evaluation (no torch needed); the model's training uses
    ``torchvision.ops.box_iou`` (:func:`geors.models.ops.box_iou`), which gives the
    same values for boxes with an area.

    Args:
        a: ``(N, 4)`` boxes.
        b: ``(M, 4)`` boxes, same units as ``a``.

    Returns:
        ``(N, M)`` IoU values in [0, 1]; 0 where the union is empty.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return _pair_iou(a[:, None, :], b[None, :, :])


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[..., :]`` with ``b[..., :]`` (shapes broadcast); widths below 0 count as 0, and so does an
    empty union."""
    def area(x):
        return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)

    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = area(a) + area(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def average_precision(tp: np.ndarray, scores: np.ndarray, n_truth: int) -> float:
    """101-point interpolated AP from per-detection TP flags (COCO rule).

    Args:
        tp: ``(N,)`` booleans, True where the detection matched a truth box.
        scores: ``(N,)`` detection scores; detections are ranked by them.
        n_truth: number of ground-truth boxes; AP is NaN when it is 0.

    Returns:
        AP in [0, 1], or NaN without ground truth.
    """
    if n_truth == 0:
        return math.nan
    if len(tp) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = np.asarray(tp, dtype=bool)[order]
    ctp = np.cumsum(hits)
    cfp = np.cumsum(~hits)
    recall = ctp / n_truth
    precision = ctp / (ctp + cfp)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _RECALL_POINTS, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def _overlapping_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)`` of boxes ``a[i]``, ``b[j]`` with IoU > 0, and their IoU.

    An R-tree keeps this near-linear: a scene can hold tens of thousands of
    boxes, and a dense IoU matrix would need N x M memory.
    """
    import shapely

    if len(a) == 0 or len(b) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    tree = shapely.STRtree(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]))
    ia, ib = tree.query(shapely.box(a[:, 0], a[:, 1], a[:, 2], a[:, 3]), predicate="intersects")
    iou = _pair_iou(a[ia], b[ib])
    keep = iou > 0
    return ia[keep].astype(np.int64), ib[keep].astype(np.int64), iou[keep]


def _match(pred_boxes: np.ndarray, pred_scores: np.ndarray, truth_boxes: np.ndarray,
           thresholds: Sequence[float]) -> np.ndarray:
    """Greedy COCO matching in one image and class; ``(T, N)`` TP flags in input order."""
    n, m = len(pred_boxes), len(truth_boxes)
    tp = np.zeros((len(thresholds), n), dtype=bool)
    if n == 0 or m == 0:
        return tp
    ip, ig, iou = _overlapping_pairs(pred_boxes, truth_boxes)
    if len(ip) == 0:
        return tp
    # Rank of each prediction (stable, descending score); candidates of one
    # prediction sorted by descending IoU, so the first free one is the best.
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-pred_scores, kind="mergesort")] = np.arange(n)
    order = np.lexsort((-iou, rank[ip]))
    ip, ig, iou = ip[order], ig[order], iou[order]
    starts = np.flatnonzero(np.r_[True, ip[1:] != ip[:-1]])
    groups = list(zip(ip[starts].tolist(), np.split(ig, starts[1:]), np.split(iou, starts[1:]), strict=True))
    for ti, t in enumerate(thresholds):
        taken = np.zeros(m, dtype=bool)
        for det, cand_g, cand_iou in groups:
            for g, v in zip(cand_g.tolist(), cand_iou.tolist(), strict=True):
                if v < t:
                    break
                if not taken[g]:
                    taken[g] = True
                    tp[ti, det] = True
                    break
    return tp


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def evaluate_detections(
    pred,
    truth,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    match_iou: float = 0.5,
    class_agnostic: bool = False,
) -> dict:
    """Detection metrics per class and overall.

    Args:
        pred: predictions, a :class:`BoxTable` or a mapping with ``boxes``
            ``(N, 4)`` xyxy, ``scores`` ``(N,)``, ``classes`` (or ``labels``)
            ``(N,)`` and optional ``images`` ``(N,)``.
        truth: ground truth in the same units, same keys without ``scores``.
        iou_thresholds: IoU thresholds averaged into ``AP`` (default COCO's
            0.50:0.95 step 0.05).
        score_threshold: detections scoring at least this count for recall
            and precision. AP always uses every detection.
        match_iou: IoU threshold for recall and precision.
        class_agnostic: ignore classes (one class ``"all"``), e.g. when the
            truth has no class field or names differ from the model's.

    Returns:
        JSON-ready dict: ``overall`` and ``per_class`` (keyed by class as a
        string), each with ``AP50``, ``AP``, ``recall``, ``precision``,
        ``max_recall`` (recall with every detection), ``n_truth``, ``n_pred``, ``n_pred_above_threshold``, ``tp``, ``fp``,
        ``fn``; plus the thresholds used. Values that are undefined (no truth,
        no detections above the threshold) are ``None``.
    """
    p = BoxTable.from_any(pred, need_scores=True, what="predictions")
    g = BoxTable.from_any(truth, need_scores=False, what="truth")
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"IoU thresholds must lie in (0, 1], got {thresholds}")
    if not 0.0 < match_iou <= 1.0:
        raise ValueError(f"match IoU must lie in (0, 1], got {match_iou}")
    # One matching pass covers the AP thresholds, AP50 and the recall/precision IoU.
    all_t = sorted(set(thresholds) | {0.5, float(match_iou)})
    ap_idx = [all_t.index(t) for t in thresholds]
    i50, imatch = all_t.index(0.5), all_t.index(float(match_iou))

    p_cls = np.full(len(p.boxes), "all", dtype=object) if class_agnostic else p.classes.astype(str).astype(object)
    g_cls = np.full(len(g.boxes), "all", dtype=object) if class_agnostic else g.classes.astype(str).astype(object)
    p_img = p.images.astype(str)
    g_img = g.images.astype(str)
    classes = sorted(set(p_cls.tolist()) | set(g_cls.tolist()))

    per_class: dict[str, dict] = {}
    totals = {"tp": 0, "fp": 0, "fn": 0, "n_truth": 0, "n_pred": 0, "n_pred_above_threshold": 0}
    tp_any_total = 0
    aps50, aps = [], []
    for c in classes:
        pm, gm = p_cls == c, g_cls == c
        tp_all = np.zeros((len(all_t), int(pm.sum())), dtype=bool)
        scores_c = p.scores[pm]
        imgs_p, imgs_g = p_img[pm], g_img[gm]
        boxes_p, boxes_g = p.boxes[pm], g.boxes[gm]
        for img in set(imgs_p.tolist()) & set(imgs_g.tolist()):
            ip, ig = imgs_p == img, imgs_g == img
            tp_all[:, ip] = _match(boxes_p[ip], scores_c[ip], boxes_g[ig], all_t)
        n_truth = int(gm.sum())
        ap_t = [average_precision(tp_all[i], scores_c, n_truth) for i in range(len(all_t))]
        ap50 = ap_t[i50]
        ap = float(np.mean([ap_t[i] for i in ap_idx])) if n_truth else math.nan
        above = scores_c >= score_threshold
        tp = int(tp_all[imatch][above].sum())
        fp = int(above.sum()) - tp
        fn = n_truth - tp
        tp_any = int(tp_all[imatch].sum())
        per_class[str(c)] = {
            "AP50": _nan_to_none(ap50),
            "AP": _nan_to_none(ap),
            "recall": _ratio(tp, n_truth),
            "precision": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "max_recall": _ratio(tp_any, n_truth),
            "n_truth": n_truth,
            "n_pred": int(pm.sum()),
            "n_pred_above_threshold": int(above.sum()),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
        if n_truth:
            aps50.append(ap50)
            aps.append(ap)
        for k in totals:
            totals[k] += per_class[str(c)][k]  # (f1 is not summed: it is recomputed from the totals)
        tp_any_total += tp_any

    overall = {
        "AP50": float(np.mean(aps50)) if aps50 else None,
        "AP": float(np.mean(aps)) if aps else None,
        "recall": _ratio(totals["tp"], totals["n_truth"]),
        "precision": _ratio(totals["tp"], totals["tp"] + totals["fp"]),
        "f1": _ratio(2 * totals["tp"], 2 * totals["tp"] + totals["fp"] + totals["fn"]),
        "max_recall": _ratio(tp_any_total, totals["n_truth"]),
        **totals,
    }
    return {
        "overall": overall,
        "per_class": per_class,
        "iou_thresholds": thresholds,
        "match_iou": float(match_iou),
        "score_threshold": float(score_threshold),
        "class_agnostic": bool(class_agnostic),
    }


def evaluate_gate(tile_scores, tile_has_objects, threshold: float = 0.5) -> dict:
    """Recall and precision of the tile gate.

    A tile *passes* the gate when its score is at least ``threshold`` (the
    detector runs on it). Recall is the share of tiles with objects that pass:
    a tile with objects that is gated out loses all of them. Precision is the
    share of passing tiles that hold objects.

    Args:
        tile_scores: ``(T,)`` gate probabilities p(tile has objects).
        tile_has_objects: ``(T,)`` booleans from the ground truth.
        threshold: gate threshold used at inference.

    Returns:
        JSON-ready dict with ``recall``, ``precision``, ``pass_rate`` (share of
        tiles sent to the detector), ``tp``, ``fp``, ``fn``, ``tn``,
        ``n_tiles``, ``n_positive``, ``threshold``. Undefined ratios are ``None``.
    """
    scores = np.asarray(tile_scores, dtype=np.float64).reshape(-1)
    out = gate_metrics(scores >= threshold, tile_has_objects)
    out["threshold"] = float(threshold)
    return out


def gate_metrics(tile_passed, tile_has_objects) -> dict:
    """Gate recall/precision from per-tile pass flags (e.g. a ledger's ``status != "gated"``).

    Args:
        tile_passed: ``(T,)`` booleans, True where the detector ran on the tile.
        tile_has_objects: ``(T,)`` booleans from the ground truth.

    Returns:
        The dict of :func:`evaluate_gate` with ``threshold`` None.
    """
    passed = np.asarray(tile_passed, dtype=bool).reshape(-1)
    truth = np.asarray(tile_has_objects, dtype=bool).reshape(-1)
    if len(passed) != len(truth):
        raise ValueError(f"{len(passed)} tile flags for {len(truth)} tiles")
    tp = int((passed & truth).sum())
    fp = int((passed & ~truth).sum())
    fn = int((~passed & truth).sum())
    tn = int((~passed & ~truth).sum())
    return {
        "threshold": None,
        "n_tiles": int(len(passed)),
        "n_positive": int(truth.sum()),
        "recall": _ratio(tp, tp + fn),
        "precision": _ratio(tp, tp + fp),
        "pass_rate": _ratio(tp + fp, len(passed)),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


# --------------------------------------------------------------------------- vector files


def evaluate_detection_frames(
    pred,
    truth,
    *,
    pred_class_field: str | None = "class",
    truth_class_field: str | None = None,
    score_field: str = "score",
    class_agnostic: bool | None = None,
    pred_name: str = "predictions",
    truth_name: str = "truth",
    **kwargs,
) -> dict:
    """:func:`evaluate_detections` for GeoDataFrames, in the predictions' CRS.

    Truth geometries are reprojected to the predictions' CRS; every geometry
    (boxes or polygons) is replaced by its bounding box in that CRS, so IoU is
    computed on axis-aligned boxes in CRS units. After a reprojection the box
    of a reprojected box is slightly larger than the original (it encloses the
    turned box); reproject the truth beforehand if this matters.

    Args:
        pred: GeoDataFrame of detections with a score field and a class field.
        truth: GeoDataFrame of true boxes/polygons.
        pred_class_field: class field of ``pred`` (None: class-agnostic).
        truth_class_field: class field of ``truth``; default ``class`` or
            ``label`` when present.
        score_field: score field of ``pred``.
        class_agnostic: ignore classes; always the case when either side
            has no class field.
        pred_name, truth_name: names used in error messages (file paths).
        **kwargs: passed to :func:`evaluate_detections`.

    Raises:
        LabelError: missing fields, missing CRS, or CRS that cannot be transformed.
    """
    pred_table, truth_table, class_agnostic, warnings, t_cls = frame_box_tables(
        pred, truth, pred_class_field=pred_class_field, truth_class_field=truth_class_field,
        score_field=score_field, class_agnostic=class_agnostic, pred_name=pred_name, truth_name=truth_name)
    result = evaluate_detections(pred_table, truth_table, class_agnostic=class_agnostic, **kwargs)
    result["warnings"] = warnings
    result["crs"] = None if pred.crs is None else pred.crs.to_string()
    result["truth_class_field"] = t_cls
    return result


def evaluate_detection_files(
    pred_path,
    truth_path,
    *,
    scene=None,
    layer: str = "detections",
    truth_class_field: str | None = None,
    class_agnostic: bool | None = None,
    gate_threshold: float | None = None,
    **kwargs,
) -> dict:
    """Evaluate a geors GeoPackage against ground truth in any supported label format.

    Args:
        pred_path: GeoPackage written by ``geors detect``/``geors run``.
        truth_path: any OGR vector file (any CRS, reprojected to the
            predictions' CRS), or Pascal VOC XML / DeepForest CSV in pixel
            coordinates of ``scene``.
        scene: path or :class:`geors.raster.Scene`. Needed for pixel-coordinate
            truth; when given, only detections of this scene are evaluated and
            gate metrics are computed from the ``geors_tiles`` ledger.
        layer: detections layer in ``pred_path``.
        truth_class_field: class field of the truth (default ``class`` or
            ``label`` when present).
        class_agnostic: ignore classes (default: when the truth has no class).
        gate_threshold: tiles pass the gate when ``gate_score >=`` this; by
            default a tile passed when the ledger status is not ``"gated"``.
        **kwargs: passed to :func:`evaluate_detections`; ``score_threshold`` None (or absent) = the
            threshold recorded in ``pred_path``'s run record, else the default.

    Returns:
        The dict of :func:`evaluate_detections`, plus ``pred``, ``truth``,
        ``scene`` and, when the ledger allows, ``gate`` (see :func:`evaluate_gate`).

    Raises:
        LabelError: unreadable/missing files, missing fields or CRS problems,
            pixel truth without a scene.
    """
    from geors.io.box_labels import read_labels

    pred = read_layer(pred_path, layer, "predictions")
    warnings: list[str] = []
    if kwargs.get("score_threshold") is None:
        recorded = recorded_score_thresholds(pred_path)
        kwargs["score_threshold"] = recorded[-1] if recorded else DEFAULT_SCORE_THRESHOLD
        source = "the run record" if recorded else "the default"
        if len(set(recorded)) > 1:
            warnings.append(f"{pred_path}: runs wrote it with score thresholds {sorted(set(recorded))}; "
                            f"recall, precision and F1 use the latest, {recorded[-1]}")
    else:
        source = "given"
    sc = None
    if scene is not None:
        from geors.raster import Scene, open_scene

        sc = scene if isinstance(scene, Scene) else open_scene(scene)
        if "scene" in pred.columns:
            pred = pred[pred["scene"].astype(str).isin([sc.name, str(sc.path)])]
    truth_path = Path(truth_path)
    truth, truth_class_field, truth_boxes_px = read_truth(truth_path, sc, truth_class_field, warnings)
    result = evaluate_detection_frames(
        pred, truth, truth_class_field=truth_class_field, class_agnostic=class_agnostic,
        pred_name=str(pred_path), truth_name=str(truth_path), **kwargs)
    result["pred"] = str(pred_path)
    result["truth"] = str(truth_path)
    result["scene"] = None if sc is None else str(sc.path)
    result["score_threshold_from"] = source
    score_col = "score" if "score" in pred.columns else None
    if score_col and len(pred) and float(pred[score_col].min()) >= result["score_threshold"] - 1e-6:
        warnings.append(f"{pred_path}: every written detection scores >= the threshold "
                        f"{result['score_threshold']:g}, so AP50/AP and max_recall are capped by it; write the "
                        "layer with `geors detect --min-score 0.05` for AP over all scores")
    result["warnings"] = list(result.get("warnings") or []) + warnings
    if sc is not None:
        if truth_boxes_px is None:
            truth_boxes_px = read_labels(truth_path, sc, class_field=result["truth_class_field"]).boxes
        gate = _gate_from_ledger(pred_path, sc, truth_boxes_px, gate_threshold)
        if gate is not None:
            result["gate"] = gate
    return result


def _gate_from_ledger(pred_path, scene, truth_boxes_px: np.ndarray, gate_threshold: float | None) -> dict | None:
    """Gate metrics from the ``geors_tiles`` ledger; None when it holds no gate scores for the scene."""
    from geors.io.box_labels import MIN_VISIBLE, clip_boxes

    ledger = read_gate_ledger(pred_path, scene)
    if ledger is None:
        return None
    has = np.zeros(len(ledger), dtype=bool)
    for i, (x0, y0, w, h) in enumerate(ledger[["col_off", "row_off", "width", "height"]].to_numpy(dtype=float)):
        _, keep = clip_boxes(truth_boxes_px, (x0, y0, x0 + w, y0 + h), MIN_VISIBLE)
        has[i] = keep.any()
    if gate_threshold is None:
        out = gate_metrics((ledger["status"] != "gated").to_numpy(), has)
    else:
        out = evaluate_gate(ledger["gate_score"].fillna(1.0).to_numpy(dtype=float), has, gate_threshold)
    out["tile_has_objects_rule"] = f">= {MIN_VISIBLE:.0%} of a truth box's area inside the tile"
    return out
