"""Pipeline stages built from predictors: gate -> detect -> (masks) on a batch of tiles.

A stage holds loaded models (loaded lazily in the worker that first runs it,
so a stage can be shipped to Dask workers without its weights) and turns a
batch of tile pixels into :class:`geors.results.TileResult` objects. Pixels
are read once by the pipeline; the mask engine decodes boxes on the same
tile arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from geors.merge import owned_mask
from geors.raster import Scene, TileImage
from geors.results import Detection, TileResult
from geors.tiling import Tile
from geors.vector import pixel_box_to_polygon

log = logging.getLogger(__name__)

__all__ = ["DetectStage"]

# Models loaded in this process, keyed by (kind, spec, device). A Dask worker
# receives a fresh unpickled stage with every task; this cache makes it load the
# weights once per worker process instead of once per batch.
_LOADED: dict[tuple[str, str, str], object] = {}


class DetectStage:
    """R2-CNN gate + detector (+ optional box->mask engine) as a pipeline stage.

    Args:
        model: model name or path (None = the default model shipped with geors).
        device: ``auto``, ``cpu`` or ``cuda``.
        gate_threshold: tiles whose gate probability is below it skip the
            detector (status ``gated``); None disables gating. Default: the
            model's recorded threshold, else 0.5.
        score_threshold: minimum detection score kept.
        mask_engine: spec for :func:`geors.masks.make_mask_engine` (``grabcut``,
            ``box``, ``vit_b``, a checkpoint path...) or None for no masks.
        use_gate: False runs the detector on every tile (``--no-gate``).
    """

    name = "detect"

    def __init__(self, model: str | None = None, device: str = "auto", gate_threshold: float | None = None,
                 score_threshold: float = 0.3, mask_engine: str | None = None, use_gate: bool = True):
        self.model_spec = model
        self.device = device
        self.score_threshold = score_threshold
        self.mask_spec = mask_engine
        self.use_gate = use_gate
        self._gate_threshold = gate_threshold
        self._detector = None
        self._engine = None
        self.layers: tuple[str, ...] = ("detections", "instances") if mask_engine else ("detections",)

    # Dask ships stages to workers: send the specs, not the loaded weights.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_detector"] = None
        state["_engine"] = None
        return state

    @property
    def detector(self):
        if self._detector is None:
            from geors.detect import Detector

            key = ("detector", str(self.model_spec), self.device)
            if key not in _LOADED:
                _LOADED[key] = Detector.load(self.model_spec, device=self.device)
            self._detector = _LOADED[key]
        return self._detector

    @property
    def engine(self):
        if self._engine is None and self.mask_spec:
            from geors.masks import make_mask_engine

            key = ("masks", str(self.mask_spec), self.device)
            if key not in _LOADED:
                _LOADED[key] = make_mask_engine(self.mask_spec, device=self.device)
            self._engine = _LOADED[key]
        return self._engine

    @property
    def gate_threshold(self) -> float | None:
        if not self.use_gate:
            return None
        if self._gate_threshold is not None:
            return self._gate_threshold
        return float(self.detector.meta.get("gate_threshold", 0.5))

    def check_scene(self, scene: Scene) -> None:
        """Fail early (before any tile) when the model and the scene do not fit together."""
        from geors.errors import BandError

        det = self.detector
        if scene.channels != det.bands:
            raise BandError(
                f"{scene.path}: model {det.name} expects {det.bands} band(s) but geors would feed "
                f"{scene.channels} (bands {list(scene.band_indexes)}). Choose bands with --bands.")

    def describe(self) -> dict:
        det = self.detector
        info = {"model": det.name, "model_sha256": det.meta.get("sha256"), "classes": det.classes,
                "gate_threshold": self.gate_threshold, "score_threshold": self.score_threshold}
        if self.mask_spec:
            info["mask_method"] = self.engine.method
        return info

    def __call__(self, scene: Scene, tiles: Sequence[Tile], images: Sequence[TileImage]) -> list[TileResult]:
        t0 = time.perf_counter()
        det = self.detector
        x = np.stack([img.image for img in images])
        probs, per_tile = det.gate_and_detect(x, gate_threshold=self.gate_threshold,
                                              score_threshold=self.score_threshold)
        per_tile_s = (time.perf_counter() - t0) / len(tiles)
        results = []
        for tile, img, p, (boxes, scores, labels) in zip(tiles, images, probs, per_tile, strict=True):
            t1 = time.perf_counter()
            gated = self.gate_threshold is not None and p < self.gate_threshold
            dets: list[Detection] = []
            if len(boxes):
                keep = owned_mask(tile, boxes)
                # a box whose centre falls on nodata/padding is an artefact of the border
                cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(int), 0, img.valid.shape[1] - 1)
                cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(int), 0, img.valid.shape[0] - 1)
                keep &= img.valid[cy, cx]
                for b, s, c in zip(boxes[keep], scores[keep], labels[keep], strict=True):
                    dets.append(Detection(pixel_box_to_polygon(b, tile.transform), det.classes[int(c)], int(c),
                                          float(s), tuple(float(v) for v in b), float(p)))
            instances = []
            if dets and self.engine is not None:
                from geors.masks import instances_for_tile

                instances = instances_for_tile(scene, tile, img, dets, self.engine)
            results.append(TileResult(scene.name, tile.id, tile.window, "gated" if gated else "done",
                                      gate_score=float(p), seconds=per_tile_s + time.perf_counter() - t1,
                                      detections=dets, instances=instances))
        return results
