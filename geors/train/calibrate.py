"""Validation and calibration of a trained R2-CNN: detection tables, AP50, the score threshold (best F1)
and the gate threshold (a tile recall target, with a minimum of evidence).

Validation images are what :func:`geors.train.crops.split_validation` held
back (inference tiles or blocks inside them). Detections are computed as
``geors detect`` computes them without the gate, keeping scores down to 0.05.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geors.detect import padding_groups
from geors.errors import GeorsError
from geors.models.r2cnn import R2CNN
from geors.train.crops import TrainTile, count_objects, grid_tiles

__all__ = [
    "GATE_TARGET_RECALL",
    "MIN_GATE_POSITIVE_TILES",
    "MIN_GATE_EMPTY_TILES",
    "GateCalibrationError",
    "SCORE_CANDIDATES",
    "validation_ap50",
    "calibrate_score_threshold",
    "gate_scores",
    "calibrate_gate_threshold",
    "calibrate_gate",
    "MONITOR_PIXELS",
    "monitor_subset",
    "validation_summary",
]

log = logging.getLogger(__name__)

GATE_TARGET_RECALL = 0.99
"""Share of the validation tiles holding objects that the calibrated gate must pass."""

MIN_GATE_POSITIVE_TILES = 3
"""Fewer validation images with objects than this are too little evidence for a gate threshold: the gate is
disabled. (One validation tile scoring 0.998 once set a threshold that gated out a whole other scene.)"""

MIN_GATE_EMPTY_TILES = 1
"""A gate threshold also needs validation images without objects: without one there is no evidence that the
gate skips anything, only a risk that it hides objects; the gate is disabled."""


class GateCalibrationError(GeorsError, ValueError):
    """A gate threshold that passes fewer positive validation tiles than the recall target."""


@torch.no_grad()
def validation_tables(model: R2CNN, val_tiles: Sequence[TrainTile], batch_size: int = 2) -> tuple[dict, dict]:
    """``(pred, truth)`` tables of ``model``'s detections (score >= 0.05, no gate) on ``val_tiles``.

    Each image is trimmed by its own zero padding (:func:`geors.detect.padding_groups`, the rule of
    ``geors detect``), so its detections do not depend on the images batched with it.
    """
    dev = next(model.parameters()).device
    pred: dict[str, list] = {"boxes": [], "scores": [], "classes": [], "images": []}
    truth: dict[str, list] = {"boxes": [], "classes": [], "images": []}
    for i in range(0, len(val_tiles), batch_size):
        chunk = val_tiles[i : i + batch_size]
        shapes = {t.image.shape for t in chunk}
        groups = [list(range(len(chunk)))] if len(shapes) == 1 else [[j] for j in range(len(chunk))]
        for grp in groups:
            x = torch.from_numpy(np.stack([chunk[j].image for j in grp])).to(dev)
            for idx, xs in padding_groups(x):
                dets = model.detect_from_features(model.features(xs), tuple(xs.shape[-2:]), 0.05)
                for j, d in zip((grp[k] for k in idx), dets, strict=True):
                    _add_tables(pred, truth, f"{i}:{j}:{chunk[j].name}", chunk[j], d)
    p = {"boxes": np.concatenate(pred["boxes"]).reshape(-1, 4), "scores": np.concatenate(pred["scores"]),
         "classes": np.asarray(pred["classes"], np.int64), "images": np.asarray(pred["images"], object)}
    g = {"boxes": np.concatenate(truth["boxes"]).reshape(-1, 4), "classes": np.asarray(truth["classes"], np.int64),
         "images": np.asarray(truth["images"], object)}
    return p, g


def _add_tables(pred: dict, truth: dict, name: str, t: TrainTile, d) -> None:
    """Append image ``name``'s detections ``d`` and its truth ``t`` to the tables."""
    pred["boxes"].append(d.boxes.float().cpu().numpy())
    pred["scores"].append(d.scores.float().cpu().numpy())
    pred["classes"] += d.labels.cpu().tolist()
    pred["images"] += [name] * len(d.boxes)
    truth["boxes"].append(np.asarray(t.boxes, np.float32).reshape(-1, 4))
    truth["classes"] += np.asarray(t.class_ids).reshape(-1).tolist()
    truth["images"] += [name] * len(t.boxes)


@torch.no_grad()
def validation_ap50(model: R2CNN, val_tiles: Sequence[TrainTile], num_classes: int, batch_size: int = 2) -> float:
    """AP50 (mean over classes with objects) of ``model``'s detections (score >= 0.05, no gate) on ``val_tiles``."""
    from geors.evaluate.detections import evaluate_detections

    p, g = validation_tables(model, val_tiles, batch_size)
    ap50 = evaluate_detections(p, g, iou_thresholds=(0.5,))["overall"]["AP50"]
    return float(ap50 or 0.0)


PRIOR_SCORE_THRESHOLD = 0.3
"""``geors detect``'s score threshold for a model without one: the calibration falls back towards it when the
validation objects cannot tell thresholds apart."""

SCORE_CANDIDATES = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""Score thresholds :func:`calibrate_score_threshold` chooses from (0.05 to 0.95)."""


@torch.no_grad()
def calibrate_score_threshold(
    model: R2CNN, val_tiles: Sequence[TrainTile], candidates: Sequence[float] = SCORE_CANDIDATES
) -> dict[str, Any]:
    """The detection score threshold with the highest F1 on the validation tiles.

    ``geors detect`` writes the boxes scoring at least the model's
    ``score_threshold`` unless ``--score-threshold`` is given. One fixed
    value does not suit every model: a detector trained with empty crops as
    negatives scores its true boxes lower, and at a fixed 0.3 it kept about
    half of the AP50 it reaches at 0.05 on held-out trees (docs/detector.md).
    Each candidate is scored by the F1 of recall and precision (IoU 0.5, over
    all classes). The highest F1 wins unless the validation objects are too
    few to tell thresholds apart: every candidate whose F1 is within one
    standard error of the best (``sqrt(F1 (1 - F1) / n_truth)``) is as good
    as far as they show, and of those the one nearest
    :data:`PRIOR_SCORE_THRESHOLD` (``geors detect``'s default) is taken, ties
    to the lower. (On the DOTA split, 9 held-back vehicles: F1 0.75 at 0.80,
    0.72 at 0.30; on the test side 0.38 at 0.80, 0.51 at 0.30.) With many
    objects the tolerance vanishes and the rule is the highest F1. Without
    validation objects, or with F1 0 everywhere, nothing is calibrated and
    the status says so (``geors detect`` then uses its default, 0.3).

    Returns:
        ``{"status": "calibrated"|"default", "score_threshold" (None when not
        calibrated), "f1", "recall", "precision" (at it), "n_truth", "AP50" (of
        the same detections, scores >= 0.05), "best_f1_threshold",
        "f1_tolerance", "curve": [[t, recall, precision, f1], ...], "rule"}``.
    """
    from geors.evaluate.detections import evaluate_detections

    rule = ("highest F1 (IoU 0.5) on the validation images over thresholds 0.05-0.95, within one standard error "
            f"of it the threshold nearest {PRIOR_SCORE_THRESHOLD}; ties: the lower threshold")
    p, g = validation_tables(model, val_tiles) if val_tiles else (None, None)
    n_truth = 0 if g is None else len(g["boxes"])
    ap50 = (float(evaluate_detections(p, g, iou_thresholds=(0.5,))["overall"]["AP50"] or 0.0)
            if n_truth else None)
    curve = []
    best: tuple[float, float, float, float] | None = None
    if n_truth:
        for t in candidates:
            o = evaluate_detections(p, g, iou_thresholds=(0.5,), score_threshold=float(t))["overall"]
            r, pr = o["recall"] or 0.0, o["precision"] or 0.0
            f1 = 2 * r * pr / (r + pr) if r + pr > 0 else 0.0
            curve.append([float(t), round(r, 4), round(pr, 4), round(f1, 4)])
            if f1 > 0 and (best is None or f1 > best[3] + 1e-12):
                best = (float(t), r, pr, f1)
    if best is None:
        log.info("score threshold not calibrated (%s): geors detect uses its default",
                 "no validation objects" if not n_truth else "no validation object was found at any threshold")
        return {"status": "default", "score_threshold": None, "f1": None, "recall": None, "precision": None,
                "n_truth": n_truth, "AP50": ap50, "best_f1_threshold": None, "f1_tolerance": None,
                "curve": curve, "rule": rule}
    tol = math.sqrt(best[3] * (1 - best[3]) / n_truth)
    near = [row for row in curve if row[3] > 0 and row[3] >= best[3] - tol - 1e-9]
    t, r, pr, f1 = min(near, key=lambda row: (abs(row[0] - PRIOR_SCORE_THRESHOLD), row[0]))
    log.info("score threshold %.2f: F1 %.3f (recall %.3f, precision %.3f) on %d validation objects%s",
             t, f1, r, pr, n_truth, "" if t == best[0] else
             f" (best F1 {best[3]:.3f} at {best[0]:.2f}, within one standard error {tol:.3f})")
    return {"status": "calibrated", "score_threshold": t, "f1": f1, "recall": r, "precision": pr,
            "n_truth": n_truth, "AP50": ap50, "best_f1_threshold": best[0], "f1_tolerance": round(tol, 4),
            "curve": curve, "rule": rule}


@torch.no_grad()
def gate_scores(model: R2CNN, tiles: Sequence[TrainTile], batch_size: int = 4) -> np.ndarray:
    """Gate probability ``(N,)`` of each tile, as :meth:`geors.detect.Detector.gate` computes it.

    Tiles of equal shape are batched together, each trimmed by its own zero padding
    (:func:`geors.detect.padding_groups`, as ``geors detect`` does), so a tile's probability does not
    depend on its batch mates; the result follows ``tiles``' order.
    """
    dev = next(model.parameters()).device
    probs = np.zeros(len(tiles), np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tiles):
        by_shape.setdefault(tuple(t.image.shape), []).append(i)
    for ids in by_shape.values():
        for start in range(0, len(ids), batch_size):
            sel = ids[start : start + batch_size]
            x = torch.from_numpy(np.stack([tiles[i].image for i in sel])).to(dev)
            for idx, xs in padding_groups(x):
                probs[[sel[k] for k in idx]] = model.gate_forward(xs).float().softmax(dim=1)[:, 1].cpu().numpy()
    return probs


def _kth_highest(scores: np.ndarray, target_recall: float) -> float:
    k = int(math.ceil(target_recall * len(scores) - 1e-9))
    return float(np.sort(scores)[::-1][max(k, 1) - 1])


def calibrate_gate_threshold(
    pos_scores: np.ndarray,
    empty_scores: np.ndarray,
    target_recall: float = GATE_TARGET_RECALL,
    train_pos_scores: np.ndarray | None = None,
    min_positive: int = MIN_GATE_POSITIVE_TILES,
    min_empty: int = MIN_GATE_EMPTY_TILES,
) -> dict[str, Any]:
    """Gate threshold for a target tile recall, from validation gate probabilities.

    The threshold is the ``k``-th highest probability of the validation tiles
    holding objects, ``k = ceil(target_recall * n_pos)``: the highest threshold
    that still passes at least ``target_recall`` of them (a tile passes when
    its probability is ``>=`` the threshold). With ``train_pos_scores`` the
    same rule on the training tiles with objects gives a second value and the
    lower one is kept: a validation split of a few tiles is a noisy estimate,
    and a gate must not reject the tiles it was trained on either. There is
    no cap (the previous rule capped the threshold at 0.5 or 0.95). With too
    little evidence (fewer than ``min_positive`` validation tiles with objects
    or ``min_empty`` without) nothing is calibrated and the gate is disabled
    (threshold 0: every tile passes): one validation tile scoring 0.998 set a
    threshold that gated out every tile of another scene.

    Args:
        pos_scores: gate probabilities of validation tiles holding objects.
        empty_scores: gate probabilities of validation tiles without objects.
        target_recall: share of positive tiles to pass, in ``(0, 1]``.
        train_pos_scores: optional gate probabilities of training tiles with objects.
        min_positive, min_empty: the evidence a threshold needs.

    Returns:
        ``{"status": "calibrated"|"disabled", "gate_threshold", "target_recall",
        "achieved_recall", "pass_rate", "empty_pass_rate", "n_pos_tiles",
        "n_empty_tiles", "train_recall", "rule", "reason"}`` (validation
        figures; rates None where undefined).

    Raises:
        GateCalibrationError: the threshold passes fewer positive validation
            tiles than the target (guards the invariant; the rule cannot miss it).
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target recall must lie in (0, 1], got {target_recall}")
    pos = np.asarray(pos_scores, np.float64).reshape(-1)
    neg = np.asarray(empty_scores, np.float64).reshape(-1)
    tpos = None if train_pos_scores is None else np.asarray(train_pos_scores, np.float64).reshape(-1)
    rule = ("k-th highest gate probability of the validation tiles with objects, k = ceil(target_recall * n_pos)"
            + ("; the lower of that and the same rule on the training tiles with objects" if tpos is not None else ""))
    if len(pos) == 0:
        thr, status, reason = 0.0, "disabled", "no validation tile holds an object: nothing to calibrate on"
    elif len(pos) < min_positive or len(neg) < min_empty:
        thr, status = 0.0, "disabled"
        reason = (f"too little evidence to calibrate it: {len(pos)} validation tile(s) with objects and {len(neg)} "
                  f"without (at least {min_positive} and {min_empty} needed)")
    else:
        thr, status, reason = _kth_highest(pos, target_recall), "calibrated", None
        if tpos is not None and len(tpos):
            thr = min(thr, _kth_highest(tpos, target_recall))
    both = np.concatenate([pos, neg])
    result = {
        "status": status,
        "gate_threshold": thr,
        "target_recall": float(target_recall),
        "achieved_recall": float((pos >= thr).mean()) if len(pos) else None,
        "pass_rate": float((both >= thr).mean()) if len(both) else None,
        "empty_pass_rate": float((neg >= thr).mean()) if len(neg) else None,
        "n_pos_tiles": int(len(pos)),
        "n_empty_tiles": int(len(neg)),
        "train_recall": float((tpos >= thr).mean()) if tpos is not None and len(tpos) else None,
        "rule": rule,
        "reason": reason,
    }
    if status == "calibrated" and result["achieved_recall"] < target_recall:
        raise GateCalibrationError(
            f"gate threshold {thr:.4g} passes {result['achieved_recall']:.3f} of the {len(pos)} validation tiles "
            f"with objects, below the target {target_recall}; not shipping a gate that hides objects.")
    return result


def calibrate_gate(
    model: R2CNN,
    val_tiles: Sequence[TrainTile],
    target_recall: float | None = GATE_TARGET_RECALL,
    tile_size: int = 640,
    overlap: int = 128,
    train_tiles: Sequence[TrainTile] | None = None,
) -> dict[str, Any]:
    """Calibrate ``model``'s gate threshold on validation tiles (the one path of ``geors train`` and the example).

    Images larger than a tile are cut into the inference grid first. See
    :func:`calibrate_gate_threshold` for the rule (``train_tiles`` give the
    second, training-tile bound). With ``target_recall=None``, or no
    validation tile holding an object, the gate is disabled (threshold 0) and
    a warning is logged: a model without a calibrated gate runs the detector
    on every tile rather than risk hiding objects.

    Returns:
        the dict of :func:`calibrate_gate_threshold` plus ``gate_pool`` and
        ``train_pass_rate``.
    """
    grid = grid_tiles(val_tiles, tile_size, overlap)
    has = np.array([len(t.boxes) > 0 for t in grid], bool)
    p = gate_scores(model, grid)
    tp = th = None
    if train_tiles:
        tg = grid_tiles(train_tiles, tile_size, overlap)
        tp = gate_scores(model, tg)
        th = np.array([len(t.boxes) > 0 for t in tg], bool)
    if target_recall is None:
        calib = calibrate_gate_threshold(np.zeros(0), p[~has])
        calib.update(status="disabled", reason="gate calibration turned off (gate_recall=None)", target_recall=None)
    else:
        calib = calibrate_gate_threshold(p[has], p[~has], target_recall, None if tp is None else tp[th])
    calib["gate_pool"] = model.config.gate_pool
    calib["train_pass_rate"] = float((tp >= calib["gate_threshold"]).mean()) if tp is not None and len(tp) else None
    if tp is not None and th.any():
        calib["train_recall"] = float((tp[th] >= calib["gate_threshold"]).mean())
    if calib["status"] == "disabled":
        log.warning("GATE DISABLED (threshold 0, every tile goes to the detector): %s. Label more of the scene "
                    "(areas with objects and without) to calibrate it.", calib["reason"])
    else:
        log.info("gate threshold %.4g: passes %.3f of %d validation tiles with objects (target %.3f), "
                 "%s of %d empty ones", calib["gate_threshold"], calib["achieved_recall"], calib["n_pos_tiles"],
                 target_recall, "n/a" if calib["empty_pass_rate"] is None else f"{calib['empty_pass_rate']:.3f}",
                 calib["n_empty_tiles"])
    return calib


MONITOR_PIXELS = 2 * 640 * 640
"""Validation during training scores at most about this many pixels of the held-back images (on one CPU thread a
640 px tile costs seconds); the calibration at the end uses all of them."""


def monitor_subset(val_tiles: Sequence[TrainTile], seed: int) -> list[TrainTile]:
    """The validation images scored during training: all of them up to :data:`MONITOR_PIXELS`, else a seeded
    choice of that many pixels, images with objects first (the calibration at the end uses them all)."""
    total = sum(t.image.shape[1] * t.image.shape[2] for t in val_tiles)
    if total <= MONITOR_PIXELS:
        return list(val_tiles)
    order = np.random.default_rng(seed + 104729).permutation(len(val_tiles))
    order = sorted(order, key=lambda i: not len(val_tiles[i].boxes))  # stable: objects first, seeded within
    out, px = [], 0
    for i in order:
        if px >= MONITOR_PIXELS:
            break
        out.append(val_tiles[i])
        px += val_tiles[i].image.shape[1] * val_tiles[i].image.shape[2]
    return out


def validation_summary(val_tiles: Sequence[TrainTile], score_calib: dict[str, Any],
                       gate_calib: dict[str, Any]) -> dict[str, Any]:
    """The final figures on the held-back labels, and one line saying them (and whether the gate is on)."""
    n = count_objects(val_tiles)
    gate_note = None if gate_calib["status"] == "calibrated" else f"gate disabled: {gate_calib['reason']}"
    if not n:
        line = "no held-back labels (validation switched off): gate and score threshold not calibrated"
        return {"AP50": None, "F1": None, "line": line, "gate_note": gate_note}
    ap, f1 = score_calib.get("AP50"), score_calib.get("f1")
    at = (f"F1 {f1:.3f} at score threshold {score_calib['score_threshold']:.2f}" if f1 is not None
          else "F1 0 (no object found at any score threshold)")
    line = (f"validation on {n} held-back objects in {len(val_tiles)} images: AP50 "
            f"{0.0 if ap is None else ap:.3f}, {at}")
    return {"AP50": ap, "F1": f1, "line": line, "gate_note": gate_note}
