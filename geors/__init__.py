"""geors: find and outline objects in very large georeferenced rasters.

Public API: see ``__all__``. Light parts (scenes, tiles) import eagerly; parts
that pull in torch, OpenCV or SAM are imported on first attribute access, so
``import geors`` stays fast and optional extras stay optional.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from geors.errors import GeorsError  # noqa: E402
from geors.raster import Scene, open_scene  # noqa: E402
from geors.tiling import Tile, TileGrid  # noqa: E402

_LAZY = {
    "run": "geors.pipeline",
    "process_scenes": "geors.pipeline",
    "RunSummary": "geors.pipeline",
    "PipelineConfig": "geors.config",
    "TilingConfig": "geors.config",
    "DetectConfig": "geors.config",
    "MaskConfig": "geors.config",
    "SegmentConfig": "geors.config",
    "ExecutionConfig": "geors.config",
    "OutputConfig": "geors.config",
    "Stage": "geors.stage_contract",
    "TileBatch": "geors.stage_contract",
    "DetectStage": "geors.stages",
    "BoxMasksStage": "geors.stages",
    "TileInfoStage": "geors.stages",
    "Detector": "geors.detect",
    "make_mask_engine": "geors.masks",
    "write_label_raster": "geors.samrs",
    "read_labels": "geors.io.box_labels",
    "evaluate_detections": "geors.evaluate",
    "evaluate_detection_files": "geors.evaluate",
    "miou_instances": "geors.evaluate",
    "GeoPackageWriter": "geors.vector",
    "train": "geors.train",  # the package is callable: geors.train(...) is geors.train.api.train
    "TrainData": "geors.train.api",
    "TrainingRun": "geors.train.api",
    "TrainResult": "geors.train.api",
}

__all__ = ["__version__", "GeorsError", "Scene", "open_scene", "Tile", "TileGrid", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geors' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name != "train":
        value = getattr(value, name)
    globals()[name] = value
    return value
