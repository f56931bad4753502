"""Value objects that stages return and :mod:`geors.vector` writes.

Geometries are shapely objects in the scene CRS. Pixel boxes are tile-local
``(xmin, ymin, xmax, ymax)`` floats, x = column, y = row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window


@dataclass
class Detection:
    geometry: object  # shapely Polygon, box footprint in scene CRS
    class_name: str
    class_id: int
    score: float
    box_px: tuple[float, float, float, float] | None = None  # tile-local pixels
    gate_score: float | None = None
    passes_threshold: bool = True  # False: written below the score threshold (DetectConfig.min_score)


@dataclass
class Instance:
    geometry: object  # shapely Polygon/MultiPolygon in scene CRS
    class_name: str
    score: float
    mask_score: float | None
    mask_method: str  # "sam:vit_b", "grabcut", "box", ...
    detection_index: int | None = None  # index into the same TileResult.detections
    class_id: int | None = None
    box_px: tuple[float, float, float, float] | None = None  # tile-local prompt box (ownership by its centre)
    box_fid: int | None = None  # a given box's id in its file (fid, VOC object or CSV row number)
    box_attributes: str | None = None  # the given box's attributes, JSON


@dataclass
class SegmentPolygon:
    geometry: object  # shapely (Multi)Polygon in scene CRS
    class_name: str
    class_id: int
    edge: bool = False  # touches an inner core edge: a candidate for the dissolve across cores


@dataclass
class TileResult:
    """Everything one tile produced; written with its ledger row in one transaction."""

    scene: str
    tile_id: str
    window: Window
    status: str  # "done", "nodata", "gated", "failed"
    gate_score: float | None = None
    seconds: float = 0.0
    detections: list[Detection] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    segmentation: list[SegmentPolygon] = field(default_factory=list)
    # tile-local class ids (H, W) uint8, 255 = no class; a segmentation stage fills it and the
    # pipeline (not the stage) clips it to the core and polygonises it into ``segmentation``
    class_raster: np.ndarray | None = None
    # rows of plain layers (e.g. ``tiles``, ``tile_cores``): layer -> [(fields, geometry in scene CRS)]
    rows: dict[str, list[tuple[dict, object]]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # seconds per step, for the run summary
    message: str = ""
    # given boxes this tile owns that got no outline: {"box_fid", "reason"} (the summary lists them)
    unanswered: list[dict] = field(default_factory=list)
