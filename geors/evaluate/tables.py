"""Prediction and truth tables for the detection metrics: files and layers read into boxes.

What :mod:`geors.evaluate.detections` scores comes from here:

- :class:`BoxTable`: boxes with classes, optional scores and image keys (the input of
  :func:`~geors.evaluate.detections.evaluate_detections`).
- :func:`frame_box_tables`: two GeoDataFrames (predictions, truth) as box tables in the
  predictions' CRS: truth reprojected, every geometry replaced by its bounding box, class
  fields found and compared (case-insensitively when the names differ only in case).
- :func:`read_layer`, :func:`read_truth`: a layer of a vector file; truth in any supported
  label format (OGR vector file in any CRS, or VOC XML / pixel CSV in a scene's pixels).
- :func:`truth_outlines`: truth whose features have no area (points, open lines) refused by
  id; closed lines read as the polygons they ring (shared with :mod:`geors.evaluate.masks`).
- :func:`recorded_score_thresholds`, :func:`read_gate_ledger`: what a geors GeoPackage
  recorded (the runs' score thresholds; the ``geors_tiles`` ledger rows the gate decided).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "BoxTable",
    "frame_box_tables",
    "read_layer",
    "read_truth",
    "truth_outlines",
    "recorded_score_thresholds",
    "read_gate_ledger",
]


@dataclass(frozen=True)
class BoxTable:
    """Boxes with classes, optional scores and image keys, as parallel arrays.

    Attributes:
        boxes: ``(N, 4)`` float xyxy boxes (pixels or CRS units).
        classes: ``(N,)`` class labels (names or ids; compared by equality).
        scores: ``(N,)`` confidence scores for predictions; ``None`` for truth.
        images: ``(N,)`` image/scene keys; boxes only match within one image.
    """

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray | None = None
    images: np.ndarray | None = None

    @classmethod
    def from_any(cls, obj, *, need_scores: bool, what: str) -> BoxTable:
        """Build from a BoxTable or a mapping with ``boxes``, ``classes``/``labels``, ``scores``, ``images``."""
        if isinstance(obj, BoxTable):
            table = obj
        elif isinstance(obj, Mapping):
            classes = obj.get("classes", obj.get("labels"))
            table = cls(
                boxes=obj["boxes"],
                classes=classes if classes is not None else np.zeros(len(obj["boxes"]), dtype=np.int64),
                scores=obj.get("scores"),
                images=obj.get("images"),
            )
        else:
            raise TypeError(f"{what} must be a BoxTable or a mapping of arrays, got {type(obj).__name__}")
        boxes = np.asarray(table.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(boxes)
        classes = np.asarray(table.classes).reshape(-1)
        scores = None if table.scores is None else np.asarray(table.scores, dtype=np.float64).reshape(-1)
        images = np.zeros(n, dtype=np.int64) if table.images is None else np.asarray(table.images).reshape(-1)
        if need_scores and scores is None:
            raise ValueError(f"{what} need scores")
        for name, arr in (("classes", classes), ("scores", scores), ("images", images)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"{what}: {name} has {len(arr)} entries for {n} boxes")
        return cls(boxes=boxes, classes=classes, scores=scores, images=images)


_CLASS_FIELDS = ("class", "label")


def _class_column(gdf, field: str | None, path: str) -> str | None:
    from geors.errors import LabelError

    fields = [c for c in gdf.columns if c != "geometry"]
    if field is not None:
        if field not in fields:
            raise LabelError(f"{path}: no field {field!r}; available fields: {', '.join(fields) or '(none)'}. "
                             "Pass one of them as class field.")
        return field
    return next((f for f in fields if f.lower() in _CLASS_FIELDS), None)

def frame_box_tables(
    pred,
    truth,
    *,
    pred_class_field: str | None = "class",
    truth_class_field: str | None = None,
    score_field: str = "score",
    class_agnostic: bool | None = None,
    pred_name: str = "predictions",
    truth_name: str = "truth",
) -> tuple[dict, dict, bool, list[str], str | None]:
    """Predictions and truth GeoDataFrames as box tables in the predictions' CRS.

    See :func:`geors.evaluate.detections.evaluate_detection_frames` for the rules.

    Returns:
        ``(pred_table, truth_table, class_agnostic, warnings, truth_class_field)``: the
        tables as mappings for :meth:`BoxTable.from_any`, whether classes are ignored,
        notes for the result's ``warnings`` and the truth's class field (None without).

    Raises:
        LabelError: missing fields, missing CRS, or CRS that cannot be transformed.
    """
    from geors.errors import LabelError

    if score_field not in pred.columns:
        fields = [c for c in pred.columns if c != "geometry"]
        raise LabelError(f"{pred_name}: no score field {score_field!r}; available fields: {', '.join(fields)}. "
                         "Pass a geors detections layer.")
    p_cls = None
    if pred_class_field is not None:
        p_cls = pred_class_field if pred_class_field in pred.columns else None
    t_cls = _class_column(truth, truth_class_field, truth_name)
    # Without a class on either side, classes cannot be compared.
    class_agnostic = bool(class_agnostic) or p_cls is None or t_cls is None
    if len(truth) and len(pred):
        if pred.crs is None or truth.crs is None:
            which = pred_name if pred.crs is None else truth_name
            raise LabelError(f"{which}: the layer has no CRS, so predictions and truth cannot be compared. "
                             "Assign one, e.g. `ogr2ogr -a_srs EPSG:XXXX`.")
        if not pred.crs.equals(truth.crs):
            try:
                truth = truth.to_crs(pred.crs)
            except Exception as exc:  # pyproj raises several types
                raise LabelError(f"{truth_name}: cannot transform from {truth.crs} to the predictions' CRS "
                                 f"{pred.crs} ({exc}); reproject it.") from None
    pb = pred.geometry.bounds.to_numpy(dtype=np.float64)
    tb = truth.geometry.bounds.to_numpy(dtype=np.float64)
    if len(tb) and not np.all(np.isfinite(tb)):
        raise LabelError(f"{truth_name}: some geometries are empty or cannot be transformed to {pred.crs}.")
    if len(pb) and not np.all(np.isfinite(pb)):
        raise LabelError(f"{pred_name}: some geometries are empty.")
    p_classes = (np.zeros(len(pred), dtype=np.int64) if class_agnostic or p_cls is None
                 else pred[p_cls].astype(str).to_numpy())
    t_classes = (np.zeros(len(truth), dtype=np.int64) if class_agnostic or t_cls is None
                 else truth[t_cls].astype(str).to_numpy())
    warnings = []
    if not class_agnostic and len(p_classes) and len(t_classes):
        p_set, t_set = set(p_classes.tolist()), set(t_classes.tolist())
        if not p_set & t_set:
            # "tree" vs "Tree": the NEON labels and many models differ only in case.
            if {c.casefold() for c in p_set} & {c.casefold() for c in t_set}:
                p_classes = np.array([c.casefold() for c in p_classes], dtype=object)
                t_classes = np.array([c.casefold() for c in t_classes], dtype=object)
                warnings.append("class names compared case-insensitively (they differ only in case)")
            else:
                warnings.append(f"no predicted class {sorted(p_set)} matches a truth class {sorted(t_set)}; "
                                "use --class-agnostic or another --class-field")
    pred_table = {"boxes": pb, "scores": pred[score_field].to_numpy(dtype=np.float64), "classes": p_classes}
    truth_table = {"boxes": tb, "classes": t_classes}
    return pred_table, truth_table, bool(class_agnostic), warnings, t_cls


def read_layer(path, layer: str | None, what: str):
    """A layer of a vector file as a GeoDataFrame (fid as index); a LabelError naming the file."""
    import pyogrio

    from geors.errors import LabelError

    if not Path(path).exists():
        raise LabelError(f"{path}: {what} file not found. Check the path.")
    try:
        return pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
    except Exception as exc:  # pyogrio raises several GDAL-backed types
        hint = f" Does it have a layer {layer!r}?" if layer else ""
        raise LabelError(f"{path}: cannot read the {what} ({exc}).{hint}") from None

def read_truth(truth_path, scene, truth_class_field: str | None, warnings: list[str]):
    """Truth in any supported label format as a GeoDataFrame.

    Args:
        truth_path: OGR vector file (any CRS), or VOC XML / pixel CSV in pixels of ``scene``.
        scene: :class:`geors.raster.Scene` or None (then pixel truth is refused).
        truth_class_field: class field of the truth (None: ``class``/``label`` when present).
        warnings: notes are appended here (closed lines read as polygons).

    Returns:
        ``(truth, truth_class_field, truth_boxes_px)``: the GeoDataFrame, the class field to
        use and, for pixel truth, its ``(N, 4)`` pixel boxes (None for vector files).

    Raises:
        LabelError: missing or unreadable file, no labels, features without area, pixel
            truth without a scene.
    """
    import geopandas as gpd

    from geors.errors import LabelError
    from geors.io.box_labels import is_pixel_csv, read_labels

    truth_path = Path(truth_path)
    pixel_truth = truth_path.suffix.lower() == ".xml" or (
        truth_path.suffix.lower() == ".csv" and truth_path.exists() and is_pixel_csv(truth_path))
    if pixel_truth:
        if scene is None:
            raise LabelError(f"{truth_path}: pixel-coordinate truth (VOC XML / CSV) needs the scene it refers "
                             "to; pass --scene SCENE.")
        labels = read_labels(truth_path, scene, class_field=truth_class_field, option="TRUTH")
        truth = gpd.GeoDataFrame({"class": list(labels.class_names)},
                                 geometry=_pixel_boxes_to_polygons(labels.boxes, scene.transform), crs=scene.crs)
        return truth, "class", labels.boxes
    truth = read_layer(truth_path, None, "truth")
    if len(truth) == 0:
        raise LabelError(f"{truth_path}: contains no labels; nothing to evaluate against.")
    return truth_outlines(truth, truth_path, warnings), truth_class_field, None


def truth_outlines(truth, path, warnings: list[str] | None = None):
    """``truth`` with closed lines as polygons; a LabelError when any feature has no area.

    A point or an open line cannot be matched by any box or outline, so truth holding one
    would score every prediction near it as a false positive and the object as missed (AP 0
    for a file of points): refused, naming the file, the geometry kinds and the ids. A closed
    line is read as the polygon it rings, with a note in ``warnings``.
    """
    import shapely

    from geors.errors import LabelError
    from geors.io.box_labels import closed_lines_as_polygons

    if len(truth) == 0:
        return truth
    geoms = truth.geometry.to_numpy()
    missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    geoms, closed, open_lines = closed_lines_as_polygons(geoms)
    no_area = ~missing & (open_lines | ~(shapely.area(geoms) > 0))
    ids = truth.index.to_numpy()
    if no_area.any():
        kinds: dict[str, int] = {}
        for g, is_open in zip(geoms[no_area], open_lines[no_area], strict=True):
            kind = "open line" if is_open else g.geom_type
            kinds[kind] = kinds.get(kind, 0) + 1
        shown = ", ".join(str(i) for i in ids[no_area][:10]) + (" ..." if no_area.sum() > 10 else "")
        raise LabelError(
            f"{path}: {int(no_area.sum())} of {len(truth)} truth features have no area "
            f"({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))}; ids {shown}): truth must be boxes or "
            "polygons (a closed line is read as the polygon it rings). Buffer points to the objects' size "
            "(e.g. QGIS 'Buffer' or `ogr2ogr -dialect sqlite -sql \"SELECT ST_Buffer(geom, R) ...\"`) or "
            "pass the outlines.")
    if closed.any():
        truth = truth.copy()
        truth.geometry = geoms
        note = (f"{path}: {int(closed.sum())} closed lines (ids "
                f"{', '.join(str(i) for i in ids[closed][:10])}) read as the polygons they ring")
        log.warning("%s", note)
        if warnings is not None:
            warnings.append(note)
    return truth



def recorded_score_thresholds(pred_path) -> list[float]:
    """Score thresholds recorded by the runs that wrote ``pred_path`` (oldest first; empty for other files)."""
    import json
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{Path(pred_path)}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT models FROM geors_runs ORDER BY started").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []
    out = []
    for (models,) in rows:
        try:
            value = json.loads(models or "{}").get("score_threshold")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, int | float):
            out.append(float(value))
    return out

def read_gate_ledger(pred_path, scene):
    """The ``geors_tiles`` rows of ``scene`` the gate decided (``done``/``gated``, last per tile).

    None when ``pred_path`` has no ledger, its ledger has no gate scores, or none for the scene.
    """
    import pyogrio

    try:
        ledger = pyogrio.read_dataframe(pred_path, layer="geors_tiles", read_geometry=False)
    except Exception:
        return None
    if "gate_score" not in ledger.columns or "scene" not in ledger.columns:
        return None
    ledger = ledger[ledger["scene"].astype(str).isin([scene.name, str(scene.path)])]
    # Only tiles the gate saw: nodata and failed tiles have no gate decision.
    ledger = ledger[ledger["status"].isin(["done", "gated"])].drop_duplicates("tile_id", keep="last")
    if len(ledger) == 0 or ledger["gate_score"].isna().all():
        return None
    return ledger


def _pixel_boxes_to_polygons(boxes: np.ndarray, transform) -> list:
    import shapely

    corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]], axis=1)
    x = transform.a * corners[..., 0] + transform.b * corners[..., 1] + transform.c
    y = transform.d * corners[..., 0] + transform.e * corners[..., 1] + transform.f
    return list(shapely.polygons(np.stack([x, y], axis=-1)))
