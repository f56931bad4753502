"""The stage contract: what a stage is given, what it returns, what it must not do.

A stage turns a batch of tiles (pixels already read by the pipeline) into
tile-local results. It

- returns one :class:`geors.results.TileResult` per tile with *everything it
  saw*: detections, instances and a class raster for the whole tile, including
  the overlap. It never applies seam rules (the pipeline keeps what the tile's
  core owns and polygonises the core of the class raster: :mod:`geors.merge`);
- never writes (the pipeline writes each batch with its ledger rows in one
  transaction);
- never loads models per batch (:func:`load_once` keeps one copy per process;
  Dask ships the stage to workers without its weights);
- raises :class:`geors.errors.GeorsError` from :meth:`Stage.prepare` for bad
  input (bands, models), which the pipeline calls before any output is touched.

Stages that need per-tile inputs besides pixels (``geors masks``: the boxes a
tile owns) compute them in the main process with :meth:`Stage.tile_inputs`;
they travel with the batch, so a worker never holds all of a scene's boxes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geors.raster import Scene, TileImage
from geors.results import TileResult
from geors.tiling import Tile

__all__ = ["TileBatch", "Stage", "StageGroup", "load_once"]


@dataclass
class TileBatch:
    """A batch of tiles of one scene with their pixels (and per-tile inputs, when the stage has any)."""

    scene: Scene
    tiles: Sequence[Tile]
    images: Sequence[TileImage]
    inputs: Sequence[Any] | None = None

    def kept(self, k: int, boxes_xyxy) -> np.ndarray:
        """Bool (N,): the boxes of tile ``k`` the pipeline's seam rule will keep.

        A stage may use it to skip work on objects that another tile owns (e.g.
        no mask for a box in the overlap); the pipeline applies the rule to the
        results anyway, so a stage that does not ask is still correct.
        """
        from geors.merge import on_valid, owned_mask

        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros(0, dtype=bool)
        return owned_mask(self.tiles[k], boxes) & on_valid(self.images[k].valid, boxes)


@runtime_checkable
class Stage(Protocol):
    """A function over batches of tiles, with the few facts the pipeline needs about it.

    Attributes:
        name: short name recorded in ``geors_runs``.
        layers: output layers the stage's results fill.
        classes: class names of ``TileResult.class_raster`` ids (segmentation stages; else empty).
        skip_nodata: tiles without any valid pixel get the ledger status ``nodata`` without a call.
    """

    name: str
    layers: tuple[str, ...]
    classes: tuple[str, ...]
    skip_nodata: bool

    def prepare(self, scenes: Sequence[Scene]) -> None:
        """Load models and check every scene fits (bands...); raise a GeorsError otherwise. Main process."""

    def default_tiling(self) -> tuple[int, int]:
        """(tile size, overlap) in pixels when the user gives none (e.g. the model's)."""

    def describe(self) -> dict:
        """Provenance for ``geors_runs.models``: model names, file sha256, thresholds, mask method."""

    def tile_inputs(self, scene: Scene, tiles: Sequence[Tile]) -> list | None:
        """Per-tile inputs other than pixels (None when the stage has none). Main process."""

    def __call__(self, batch: TileBatch) -> list[TileResult]:
        """Tile-local results, one per tile, in the batch's order."""


class StageGroup:
    """Several stages in one pass over the pixels (``geors run --segmenter``): each tile is read once.

    Results of the same tile are combined: features of all stages; status
    ``done`` when any stage processed the tile (a tile the detector gate
    skipped is still ``done`` when it was segmented).
    """

    skip_nodata = True

    def __init__(self, stages: Sequence[Stage]):
        if not stages:
            raise ValueError("StageGroup needs at least one stage")
        self.stages = list(stages)
        self.name = "+".join(s.name for s in self.stages)
        self.layers = tuple(dict.fromkeys(layer for s in self.stages for layer in s.layers))
        self.classes = next((tuple(s.classes) for s in self.stages if s.classes), ())

    def prepare(self, scenes: Sequence[Scene]) -> None:
        for s in self.stages:
            s.prepare(scenes)

    def default_tiling(self) -> tuple[int, int]:
        return self.stages[0].default_tiling()

    def describe(self) -> dict:
        return {s.name: s.describe() for s in self.stages}

    def tile_inputs(self, scene: Scene, tiles: Sequence[Tile]) -> list | None:
        per_stage = [s.tile_inputs(scene, tiles) for s in self.stages]
        return None if all(p is None for p in per_stage) else list(zip(*[
            p if p is not None else [None] * len(tiles) for p in per_stage], strict=True))

    def __call__(self, batch: TileBatch) -> list[TileResult]:
        combined: list[TileResult] | None = None
        for k, stage in enumerate(self.stages):
            inputs = None if batch.inputs is None else [i[k] for i in batch.inputs]
            results = stage(TileBatch(batch.scene, batch.tiles, batch.images, inputs))
            if combined is None:
                combined = results
                continue
            for into, r in zip(combined, results, strict=True):
                into.detections.extend(r.detections)
                into.instances.extend(r.instances)
                into.segmentation.extend(r.segmentation)
                if r.class_raster is not None:
                    into.class_raster = r.class_raster
                if "failed" in (into.status, r.status):
                    into.status, into.message = "failed", into.message or r.message
                elif r.status == "done":
                    into.status = "done"
                into.seconds += r.seconds
                into.stage_seconds.update(r.stage_seconds)
        return combined or []


_LOADED: dict[tuple, object] = {}
_LOCK = threading.Lock()


def load_once(key: tuple, loader: Callable[[], object]) -> object:
    """The object ``loader()`` built for ``key`` in this process, built on first use (thread-safe).

    A Dask worker unpickles a fresh stage with every task; this keeps the
    weights loaded once per worker process instead of once per batch.
    """
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = loader()
        return _LOADED[key]
