"""Semantic segmentation metrics: per-class IoU, F1 and mIoU inside the scene footprint.

PRED is a class GeoTIFF (``geors segment --raster-out``) or a GeoPackage
``segmentation`` layer (``class`` field); TRUTH is a label raster (255 =
unlabelled, class names in the ``geors_classes`` tag or given) or polygons in
any CRS. Both are brought onto one pixel grid (the PRED raster's, or the
``--scene``'s) and compared window by window, so memory does not grow with the
scene.

Every pixel of the declared extent counts, background included:

- the extent is the scene's valid pixels with ``scene``, else every pixel of
  PRED's grid. A class raster stores "no class" (background) and nodata both
  as 255, so 255 in PRED is a pixel predicted as background, never a pixel
  left out: a prediction that misses most objects cannot score well by
  leaving them blank.
- truth pixels without a label (255 in a label raster, outside every polygon)
  are of the class ``background`` (default name ``"background"``): a class
  predicted there is a false positive. ``ignore_unlabelled=True`` leaves them
  out instead, for sparse labels where unlabelled does not mean background.

``miou`` averages the object classes (not the background) present in truth or
prediction; ``miou_with_background`` adds the background class. Classes are
matched by name (case-insensitively).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geors.errors import ConfigError, LabelError

__all__ = ["confusion_matrix", "segmentation_metrics", "evaluate_segmentation_files"]

log = logging.getLogger(__name__)

IGNORE = 255


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int, mask: np.ndarray | None = None
                     ) -> np.ndarray:
    """``(K, K + 1)`` int64 counts, rows = truth, columns = prediction.

    Truth 255 (or any id >= K) and pixels outside ``mask`` are ignored. A
    labelled truth pixel predicted 255 ("no class") goes to the last column:
    it lowers the truth class's recall and IoU without counting as any class.
    """
    p = np.asarray(pred).reshape(-1).astype(np.int64)
    t = np.asarray(truth).reshape(-1).astype(np.int64)
    keep = t < num_classes
    if mask is not None:
        keep &= np.asarray(mask, bool).reshape(-1)
    p, t = p[keep], t[keep]
    p = np.where(p < num_classes, p, num_classes)  # "no class" column
    cm = np.bincount(t * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return cm.reshape(num_classes, num_classes + 1).astype(np.int64)


def segmentation_metrics(cm: np.ndarray, classes: Sequence[str], background: str | None = None) -> dict[str, Any]:
    """Per-class IoU, F1, precision, recall and mIoU from a ``(K, K)`` or ``(K, K+1)`` confusion matrix.

    The extra column (pixels predicted "no class") counts against recall.
    ``miou`` averages the classes present in the truth or the prediction other
    than ``background``; ``miou_with_background`` includes it.
    """
    k = len(classes)
    cm = np.asarray(cm, np.int64)
    tp = np.diag(cm[:, :k]).astype(np.float64)
    truth_n = cm.sum(1).astype(np.float64)
    pred_n = cm[:, :k].sum(0).astype(np.float64)
    per: dict[str, dict[str, Any]] = {}
    ious, object_ious = [], []
    for i, name in enumerate(classes):
        union = truth_n[i] + pred_n[i] - tp[i]
        iou = tp[i] / union if union else None
        prec = tp[i] / pred_n[i] if pred_n[i] else None
        rec = tp[i] / truth_n[i] if truth_n[i] else None
        f1 = 2 * tp[i] / (truth_n[i] + pred_n[i]) if (truth_n[i] + pred_n[i]) else None
        per[name] = {"iou": iou, "f1": f1, "precision": prec, "recall": rec,
                     "truth_pixels": int(truth_n[i]), "pred_pixels": int(pred_n[i])}
        if iou is not None:
            ious.append(iou)
            if background is None or _norm(name) != _norm(background):
                object_ious.append(iou)
    total = cm.sum()
    return {"classes": per, "miou": float(np.mean(object_ious)) if object_ious else None,
            "miou_with_background": float(np.mean(ious)) if ious else None,
            "pixel_accuracy": float(tp.sum() / total) if total else None, "pixels": int(total)}


def _norm(name: str) -> str:
    return str(name).strip().lower()


def evaluate_segmentation_files(
    pred: str | Path,
    truth: str | Path,
    scene: str | Path | None = None,
    truth_class_field: str | None = None,
    truth_classes: Sequence[str] | None = None,
    background: str | None = None,
    layer: str = "segmentation",
    block: int = 1024,
    ignore_unlabelled: bool = False,
) -> dict[str, Any]:
    """Metrics of PRED (class raster or GeoPackage layer) against TRUTH (raster or polygons).

    Args:
        pred: class GeoTIFF, or a GeoPackage with a ``segmentation`` layer (then ``scene`` gives the grid).
        truth: label raster or polygon file (any CRS).
        scene: the scene; its grid is used and only its valid pixels count (the footprint).
            Without it every pixel of PRED's grid counts.
        truth_class_field: class field of polygon truth.
        truth_classes: names of the truth raster's ids (default: its ``geors_classes`` tag).
        background: name of the class of unlabelled truth pixels and of PRED's 255 (default ``"background"``);
            a class of that name in TRUTH or PRED is the same class.
        layer: layer of a GeoPackage PRED.
        block: window side in pixels.
        ignore_unlabelled: leave unlabelled truth pixels out (sparse labels) instead of counting them as
            background; predictions there are then neither right nor wrong.

    Returns:
        JSON-ready dict: ``classes`` (per class IoU, F1, precision, recall, pixel counts), ``miou`` (object
        classes), ``miou_with_background``, ``pixel_accuracy``, ``pixels``, ``footprint``, ``background``,
        ``pred``, ``truth``.
    """
    from rasterio.windows import Window

    from geors.io.seg_labels import is_raster_path, open_label_source
    from geors.raster import open_scene

    pred, truth = Path(pred), Path(truth)
    for p in (pred, truth):
        if not p.exists():
            raise LabelError(f"{p}: file not found.")
    pred_is_raster = is_raster_path(pred)
    if scene is not None:
        sc = open_scene(scene)
    elif pred_is_raster:
        sc = open_scene(pred, bands=[1])
    else:
        raise ConfigError(f"{pred}: a GeoPackage prediction needs --scene to define the pixel grid and footprint.")

    pred_src = open_label_source(pred, sc, class_field="class", layer=layer if not pred_is_raster else None,
                                 option="PRED")
    truth_src = open_label_source(truth, sc, class_field=truth_class_field, classes=truth_classes, option="TRUTH")
    bg_name = None if ignore_unlabelled else (background or "background")
    try:
        names: list[str] = []
        seen: set[str] = set()
        for n in list(truth_src.names) + ([bg_name] if bg_name else []) + list(pred_src.names):
            if _norm(n) not in seen:
                seen.add(_norm(n))
                names.append(n)
        index = {_norm(n): i for i, n in enumerate(names)}
        # the background class, when counted, is also what 255 means in truth and prediction
        unlabelled = index[_norm(bg_name)] if bg_name else IGNORE

        def lut(src) -> np.ndarray:
            t = np.full(256, unlabelled, np.uint8)
            for n, i in src.names.items():
                t[i] = index[_norm(n)]
            return t

        lp, lt = lut(pred_src), lut(truth_src)
        if not set(map(_norm, pred_src.names)) & set(map(_norm, truth_src.names)):
            log.warning("no class name is shared by %s %s and %s %s", pred, list(pred_src.names), truth,
                        list(truth_src.names))
        if scene is None:
            log.info("%s: every pixel of its grid is scored (255 = background); pass --scene to leave out the "
                     "scene's nodata pixels", pred)
        k = len(names)
        cm = np.zeros((k, k + 1), np.int64)
        for r0 in range(0, sc.height, block):
            for c0 in range(0, sc.width, block):
                win = Window(c0, r0, min(block, sc.width - c0), min(block, sc.height - r0))
                p, t = lp[pred_src.read(win)], lt[truth_src.read(win)]
                footprint = sc.read_window(win).valid if scene is not None else None
                cm += confusion_matrix(p, t, k, footprint)
    finally:
        pred_src.close()
        truth_src.close()
    out = segmentation_metrics(cm, names, background=bg_name)
    out.update(pred=str(pred), truth=str(truth), scene=str(scene) if scene else None, background=bg_name,
               footprint="valid pixels of the scene" if scene is not None else "every pixel of PRED's grid",
               unlabelled_truth="ignored" if ignore_unlabelled else "background")
    return out
