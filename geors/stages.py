"""Concrete stages (see :mod:`geors.stage_contract` for the contract): detection (+ masks), masks of given boxes,
tile-grid statistics.

Each stage loads its models once per process (:func:`geors.stage_contract.load_once`),
is shipped to Dask workers without its weights, returns tile-local results and
leaves seams and writing to the pipeline.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from geors.config import DetectConfig, MaskConfig
from geors.crs import pixel_box_to_polygon
from geors.errors import BandError
from geors.raster import Scene
from geors.results import Detection, TileResult
from geors.stage_contract import TileBatch, load_once
from geors.tiling import Tile, window_bounds

log = logging.getLogger(__name__)

__all__ = ["DetectStage", "BoxMasksStage", "TileInfoStage", "mask_engine_info"]

# SAM's native input size: box-prompted masks read 1024 px tiles unless told otherwise.
SAM_TILING = (1024, 256)


def _engine(spec: str, device: str):
    from geors.masks import make_mask_engine

    return load_once(("masks", str(spec), device), lambda: make_mask_engine(spec, device=device))


def mask_engine_info(engine) -> dict:
    """Provenance of a mask engine: method and, for SAM, the checkpoint file and its sha256."""
    info = {"mask_method": engine.method}
    ckpt = getattr(engine, "checkpoint", None)
    if ckpt is not None:
        from geors.paths import sha256_file

        info.update(mask_checkpoint=str(ckpt), mask_checkpoint_sha256=sha256_file(ckpt))
    return info


def _mask_instances(batch: TileBatch, k: int, dets: list[Detection], engine, masks: MaskConfig):
    from geors.masks import instances_for_tile

    return instances_for_tile(batch.scene, batch.tiles[k], batch.images[k], dets, engine,
                              simplify_px=masks.simplify_px, multipart=masks.multipart)


class DetectStage:
    """R2-CNN gate + detector, and masks of the detections when ``masks`` is given.

    Args:
        detect: model and thresholds (:class:`geors.config.DetectConfig`).
        masks: box -> mask engine and polygon options, or None for no masks.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    name = "detect"
    classes: tuple[str, ...] = ()
    skip_nodata = True

    def __init__(self, detect: DetectConfig | None = None, masks: MaskConfig | None = None, device: str = "auto"):
        self.config = detect or DetectConfig()
        self.masks = masks
        self.device = device
        self.layers: tuple[str, ...] = ("detections", "instances") if masks else ("detections",)

    @property
    def detector(self):
        from geors.detect import Detector

        return load_once(("detector", str(self.config.model), self.device),
                         lambda: Detector.load(self.config.model, device=self.device))

    @property
    def engine(self):
        return _engine(self.masks.engine, self.device) if self.masks else None

    @property
    def gate_threshold(self) -> float | None:
        if not self.config.use_gate:
            return None
        if self.config.gate_threshold is not None:
            return self.config.gate_threshold
        return float(self.detector.meta.get("gate_threshold", 0.5))

    @property
    def score_threshold(self) -> float:
        if self.config.score_threshold is not None:
            return self.config.score_threshold
        return self.detector.score_threshold

    @property
    def write_threshold(self) -> float:
        """The lowest score written: ``min_score`` when given (boxes below the score threshold are written
        with ``passes_threshold`` False), else the score threshold."""
        if self.config.min_score is not None:
            return min(self.config.min_score, self.score_threshold)
        return self.score_threshold

    def prepare(self, scenes: Sequence[Scene]) -> None:
        det = self.detector  # loads (and validates) the model before any output is touched
        for scene in scenes:
            if scene.channels != det.bands:
                raise BandError(
                    f"{scene.path}: model {det.name} expects {det.bands} band(s) but geors would feed "
                    f"{scene.channels} (bands {list(scene.band_indexes)}). Choose bands with --bands.")
        from geors.models.registry import fit_message, fit_warnings

        for scene in scenes:  # before any output exists: what runs but does not fit the model
            if fit_warnings(scene, det.meta, "model"):
                log.warning(fit_message(scene, det.meta, "model"))
        if self.masks:
            _ = self.engine

    def default_tiling(self) -> tuple[int, int]:
        return self.detector.tile_size, self.detector.overlap

    def describe(self) -> dict:
        det = self.detector
        info = {"model": det.name, "model_path": det.meta.get("path"), "model_sha256": det.meta.get("file_sha256"),
                "classes": det.classes, "gate_threshold": self.gate_threshold,
                "score_threshold": self.score_threshold, "min_score": self.config.min_score}
        if self.masks:
            info.update(mask_engine_info(self.engine), simplify_px=self.masks.simplify_px,
                        multipart=self.masks.multipart)
        return info

    def tile_inputs(self, scene: Scene, tiles: Sequence[Tile]) -> None:
        return None

    def __call__(self, batch: TileBatch) -> list[TileResult]:
        from geors.detect import gate_passes

        t0 = time.perf_counter()
        det = self.detector
        x = np.stack([img.image for img in batch.images])
        threshold = self.gate_threshold
        score_threshold = self.score_threshold
        probs, per_tile = det.gate_and_detect(x, gate_threshold=threshold, score_threshold=self.write_threshold)
        detect_s = (time.perf_counter() - t0) / len(batch.tiles)
        results = []
        for k, (tile, p, (boxes, scores, labels)) in enumerate(zip(batch.tiles, probs, per_tile, strict=True)):
            dets = [Detection(pixel_box_to_polygon(b, tile.transform), det.classes[int(c)], int(c), float(s),
                              tuple(float(v) for v in b), float(p), passes_threshold=float(s) >= score_threshold)
                    for b, s, c in zip(boxes, scores, labels, strict=True)]
            res = TileResult(batch.scene.name, tile.id, tile.window,
                             "gated" if threshold is not None and not gate_passes(p, threshold) else "done",
                             gate_score=float(p), detections=dets, stage_seconds={"detect": detect_s})
            if dets and self.masks:
                t1 = time.perf_counter()
                # masks only for the boxes this tile keeps; the pipeline applies the same rule to all results
                keep = batch.kept(k, np.array([d.box_px for d in dets]))
                owned = [d for d, kk in zip(dets, keep, strict=True) if kk]
                res.detections = owned
                # masks for the boxes that pass the score threshold (those below it are written for AP only)
                passing = [i for i, d in enumerate(owned) if d.passes_threshold]
                res.instances = _mask_instances(batch, k, [owned[i] for i in passing], self.engine, self.masks)
                for inst in res.instances:
                    inst.detection_index = passing[inst.detection_index]
                res.stage_seconds["masks"] = time.perf_counter() - t1
            res.seconds = sum(res.stage_seconds.values())
            results.append(res)
        return results


class BoxMasksStage:
    """Masks of given boxes (``geors masks``, ``geors label``): each tile decodes the boxes its core owns.

    Boxes come from any vector file in any CRS (or a Pascal VOC / CSV file),
    read per scene with :func:`geors.io.box_labels.read_labels` in the main
    process; :meth:`tile_inputs` hands each batch only its tiles' boxes.

    A box the user gives is always answered: every box that overlaps a scene is
    clipped to it and outlined by the tile whose core holds its (clipped)
    centre, also when that centre lies on nodata; its id in the file
    (``box_fid``) and its attributes (``box_attributes``, JSON) go with the
    instance. A box that gets no outline (an empty mask), or that no scene
    holds, is listed by id with the reason in the tile ledger's ``message`` and
    in the run summary (``TileResult.unanswered``).

    Args:
        boxes: path of the boxes/polygons file, a :class:`geors.io.box_labels.LabelSet` or
            ``(boxes, names)`` arrays in scene pixels (see :func:`geors.io.box_labels.as_labelset`).
        masks: engine and polygon options.
        device: for SAM.
        class_field: attribute holding the class (default ``class``/``label``).
        layer: layer of a multi-layer vector file.
    """

    name = "masks"
    layers = ("instances",)
    classes: tuple[str, ...] = ()
    # boxes given on nodata are still outlined (as the box, by the engine's own rule); such a tile is
    # reported with status "nodata", so an all-nodata run prints summary.NODATA_BOXES_HINT
    skip_nodata = False

    def __init__(self, boxes, masks: MaskConfig | None = None, device: str = "auto",
                 class_field: str | None = None, layer: str | None = None):
        self.boxes = str(boxes) if isinstance(boxes, str | os.PathLike) else boxes
        self.masks = masks or MaskConfig()
        self.device = device
        self.class_field = class_field
        self.layer = layer
        self._labels: dict[str, object] = {}
        self._owners: dict[str, dict[tuple[int, int], np.ndarray]] = {}
        self._centres: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.unplaced: list[dict] = []  # boxes no scene holds: {"box_fid", "reason"}
        self._first_scene: str | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_labels"] = {}  # workers get their boxes with each batch, never the whole set
        state["_owners"] = {}
        state["_centres"] = {}
        state["unplaced"] = []
        if not isinstance(state["boxes"], str):
            state["boxes"] = None
        return state

    @property
    def engine(self):
        return _engine(self.masks.engine, self.device)

    def prepare(self, scenes: Sequence[Scene]) -> None:
        from geors.io.box_labels import as_labelset

        dropped: dict[int, str] | None = None
        for scene in scenes:
            ls = as_labelset(self.boxes, scene, class_field=self.class_field, layer=self.layer, min_visible=0.0)
            self._labels[scene.name] = ls
            mine = dict(ls.dropped)
            # a box counts as unplaced only when no scene holds it
            dropped = mine if dropped is None else {f: r for f, r in dropped.items() if f in mine}
        self.unplaced = [{"box_fid": f, "reason": r} for f, r in sorted((dropped or {}).items())]
        self._first_scene = scenes[0].name if scenes else None
        _ = self.engine

    def default_tiling(self) -> tuple[int, int]:
        return SAM_TILING

    def describe(self) -> dict:
        boxes = self.boxes if isinstance(self.boxes, str) else str(getattr(self.boxes, "source", "<arrays>"))
        from geors.paths import sha256_file

        digest = sha256_file(boxes) if os.path.isfile(boxes) else None  # a changed file of the same name
        return {"boxes": boxes, "boxes_sha256": digest, "class_field": self.class_field, "layer": self.layer,
                "simplify_px": self.masks.simplify_px, "multipart": self.masks.multipart,
                **mask_engine_info(self.engine)}

    def n_boxes(self, scene: Scene) -> int:
        return len(self._labels[scene.name])

    def tile_inputs(self, scene: Scene, tiles: Sequence[Tile]) -> list:
        """Per tile: (boxes (K, 4) tile-local, class names, class ids, box ids, box attributes, unplaced boxes)
        of the boxes whose centre its core holds; the first tile of the first scene also carries the boxes
        no scene holds, so that the ledger and the summary list them once."""
        ls = self._labels[scene.name]
        boxes = np.asarray(ls.boxes, dtype=np.float64).reshape(-1, 4)
        fids = ls.fids if ls.fids is not None else np.arange(1, len(boxes) + 1)
        index = self._bucket_index(scene, tiles[0].size)
        size = tiles[0].size
        out = []
        for t in tiles:
            c = t.core
            c0, r0, c1, r1 = int(c.col_off), int(c.row_off), int(c.col_off + c.width), int(c.row_off + c.height)
            cand = [index[(bx, by)] for bx in range(c0 // size, (c1 - 1) // size + 1)
                    for by in range(r0 // size, (r1 - 1) // size + 1) if (bx, by) in index]
            idx = np.sort(np.concatenate(cand)) if cand else np.zeros(0, dtype=np.int64)
            cx, cy = self._centres[scene.name]
            inside = (cx[idx] >= c0) & (cx[idx] < c1) & (cy[idx] >= r0) & (cy[idx] < r1)
            idx = idx[inside]
            local = boxes[idx] - np.array([t.col_off, t.row_off] * 2, dtype=np.float64)
            attrs = [ls.attributes[i] for i in idx] if ls.attributes is not None else [None] * len(idx)
            first = scene.name == self._first_scene and t.row == 0 and t.col == 0
            out.append((local, [str(ls.class_names[i]) for i in idx], [int(ls.class_ids[i]) for i in idx],
                        [int(fids[i]) for i in idx], attrs, list(self.unplaced) if first else []))
        return out

    def _bucket_index(self, scene: Scene, size: int) -> dict[tuple[int, int], np.ndarray]:
        """Box indexes bucketed by centre on a ``size`` px grid (built once per scene): each tile looks
        only at the buckets its core covers, never at every box."""
        if scene.name not in self._owners:
            boxes = np.asarray(self._labels[scene.name].boxes, dtype=np.float64).reshape(-1, 4)
            # a box partly outside the scene is owned by the tile holding its centre clipped into the scene
            cx = np.clip((boxes[:, 0] + boxes[:, 2]) / 2, 0, scene.width - 1e-6)
            cy = np.clip((boxes[:, 1] + boxes[:, 3]) / 2, 0, scene.height - 1e-6)
            self._centres[scene.name] = (cx, cy)
            groups: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, (x, y) in enumerate(zip((cx // size).astype(int), (cy // size).astype(int), strict=True)):
                groups[(int(x), int(y))].append(i)
            self._owners[scene.name] = {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}
        return self._owners[scene.name]

    def __call__(self, batch: TileBatch) -> list[TileResult]:
        results = []
        for k, tile in enumerate(batch.tiles):
            t0 = time.perf_counter()
            boxes, names, ids, fids, attrs, unplaced = batch.inputs[k]
            dets = [Detection(None, n, c, 1.0, tuple(float(v) for v in b)) for b, n, c in
                    zip(boxes, names, ids, strict=True)]
            instances = _mask_instances(batch, k, dets, self.engine, self.masks) if dets else []
            outlined = set()
            for inst in instances:  # given boxes, not detections: no detection link, no detector score
                i = inst.detection_index
                outlined.add(i)
                inst.box_px = dets[i].box_px
                inst.box_fid, inst.box_attributes = fids[i], attrs[i]
                inst.detection_index = None
                inst.score = None
            unanswered = [{"box_fid": fids[i], "reason": "empty mask"} for i in range(len(dets))
                          if i not in outlined] + list(unplaced)
            # a tile without one valid pixel is "nodata" as in the pipeline's skip_nodata rule, although its
            # boxes were outlined (the engine had only nodata to go by): the summary says so (issue 26)
            on_nodata = not batch.images[k].valid.any()
            message = unanswered_message(unanswered)
            if on_nodata and instances:
                message = "; ".join(m for m in (f"{len(instances)} box(es) on nodata outlined", message) if m)
            res = TileResult(batch.scene.name, tile.id, tile.window, "nodata" if on_nodata else "done",
                             instances=instances, stage_seconds={"masks": time.perf_counter() - t0},
                             unanswered=unanswered, message=message)
            res.seconds = res.stage_seconds["masks"]
            results.append(res)
        return results


def unanswered_message(unanswered: Sequence[dict], n: int = 20) -> str:
    """The ledger message for given boxes without an outline: ids grouped by reason."""
    by_reason: dict[str, list[int]] = defaultdict(list)
    for u in unanswered:
        by_reason[u["reason"]].append(u["box_fid"])
    parts = []
    for reason, ids in by_reason.items():
        shown = ", ".join(str(i) for i in ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")
        parts.append(f"no outline for box{'es' if len(ids) > 1 else ''} {shown} ({reason})")
    return "; ".join(parts)


class TileInfoStage:
    """The tile grid as layers (``geors tiles``): footprints with nodata fraction and brightness, and cores."""

    name = "tiles"
    layers = ("tiles", "tile_cores")
    classes: tuple[str, ...] = ()
    skip_nodata = False

    def __init__(self, with_stats: bool = True):
        self.with_stats = with_stats

    def prepare(self, scenes: Sequence[Scene]) -> None:
        pass

    def default_tiling(self) -> tuple[int, int]:
        return 640, 128

    def describe(self) -> dict:
        return {"with_stats": self.with_stats}

    def tile_inputs(self, scene: Scene, tiles: Sequence[Tile]) -> None:
        return None

    def __call__(self, batch: TileBatch) -> list[TileResult]:
        import shapely

        out = []
        for tile, img in zip(batch.tiles, batch.images, strict=True):
            base = {"scene": batch.scene.name, "tile_id": tile.id, "row": tile.row, "col": tile.col}
            stats = tile_statistics(tile, img) if self.with_stats else {"nodata_fraction": None,
                                                                         "mean_brightness": None}
            c = tile.core
            rows = {
                "tiles": [({**base, "col_off": tile.col_off, "row_off": tile.row_off, "width": tile.width,
                            "height": tile.height, **stats},
                           shapely.box(*window_bounds(tile.window, batch.scene.transform)))],
                "tile_cores": [({**base, "col_off": int(c.col_off), "row_off": int(c.row_off),
                                 "width": int(c.width), "height": int(c.height)},
                                shapely.box(*window_bounds(c, batch.scene.transform)))],
            }
            status = "nodata" if stats["nodata_fraction"] == 1.0 else "done"
            out.append(TileResult(batch.scene.name, tile.id, tile.window, status, rows=rows))
        return out


def tile_statistics(tile: Tile, img) -> dict:
    """Nodata fraction and mean brightness (0..1, valid pixels) of one tile's pixels."""
    valid = img.valid[: tile.height, : tile.width]
    n = int(valid.sum())
    mean = float(img.image[:, : tile.height, : tile.width][:, valid].mean()) if n else None
    return {"nodata_fraction": 1.0 - n / valid.size, "mean_brightness": mean}
