"""``geors.train``: scenes and GIS labels in, a model file out (detector, gate or segmenter).

The Python face of ``geors train detector|gate|segmenter``, as :func:`geors.run`
is the face of ``geors run``: the same defaults, checks and outputs; the CLI
commands parse their options into these objects and make one call.

A training run is three frozen parts, written to and read from one TOML file
(:meth:`TrainingRun.to_toml` / :meth:`TrainingRun.from_toml`)::

    kind = "detector"            # or "gate" (the same network), "segmenter"
    name = "ships"               # optional: the model name (default: the output file's stem)

    [data]                       # TrainData: what to learn from
    scenes = ["train.tif"]
    labels = ["ships.gpkg"]
    class_field = "class"

    [train]                      # TrainConfig (detector) or SegTrainConfig (segmenter): how
    max_seconds = 600.0
    seed = 0

Every value is type-checked on reading; a wrong one raises one
:class:`geors.errors.ConfigError` naming the file, the section and the key.
Paths are used as written (relative ones from the current folder, as on the
command line).

Example::

    import geors
    from geors.train.api import TrainData
    from geors.train.detector import TrainConfig

    result = geors.train("detector", "ships.safetensors",
                         TrainData(scenes=["train.tif"], labels=["ships.gpkg"], class_field="class"),
                         TrainConfig(max_seconds=300))
    print(result.model, result.validation_ap50, result.score_threshold)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geors.errors import Cancelled, ConfigError, GeoreferenceError, OutputError
from geors.paths import check_outputs_not_inputs
from geors.train.run_spec import KINDS, TrainData, TrainingRun, default_train_config

__all__ = ["KINDS", "TrainData", "TrainingRun", "TrainResult", "default_train_config", "train", "train_run"]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- result
@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` made.

    Attributes:
        kind: ``detector``, ``gate`` or ``segmenter``.
        model: the model file written.
        classes: class names in id order.
        steps: optimiser steps run (both phases for the segmenter).
        seconds: training time.
        stop_reason: why training stopped (detector; segmenter: None).
        validation_ap50, validation_f1: detector: validation AP50 of the kept weights and their F1 at the
            calibrated score threshold (None without validation).
        validation_iou, validation_miou: segmenter: per-class validation IoU and their mean (None without).
        gate_threshold, score_threshold: detector: the calibrated thresholds recorded in the model.
        calibration: detector: ``{"gate": ..., "score": ...}`` as recorded in ``training``.
        summary: the JSON line ``geors train`` prints.
        messages: the lines ``geors train`` prints on stderr at the end.
        metadata: the model's whole metadata.
    """

    kind: str
    model: Path
    classes: tuple[str, ...]
    steps: int
    seconds: float
    stop_reason: str | None
    validation_ap50: float | None
    validation_f1: float | None
    validation_iou: dict[str, float | None] | None
    validation_miou: float | None
    gate_threshold: float | None
    score_threshold: float | None
    calibration: dict[str, Any]
    summary: dict[str, Any]
    messages: tuple[str, ...]
    metadata: dict[str, Any] = field(repr=False)


# ----------------------------------------------------------------------------- train
class _Cancellable:
    """A :class:`geors.progress.Progress` whose ``cancelled`` also follows a threading.Event."""

    def __init__(self, inner: Any, cancel: threading.Event | None):
        self._inner, self._cancel = inner, cancel

    @property
    def cancelled(self) -> bool:
        return bool(getattr(self._inner, "cancelled", False)) or (self._cancel is not None and self._cancel.is_set())

    def start(self, total: int, desc: str = "") -> None:
        if self._inner is not None:
            self._inner.start(total, desc)

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._inner is not None:
            self._inner.advance(n, **info)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def train(kind: str | TrainingRun, out: str | os.PathLike, data: TrainData | None = None, config: Any = None, *,
          name: str | None = None, progress: Any = None, cancel: threading.Event | None = None,
          notify: Callable[[str], None] | None = None, record: dict[str, Any] | None = None,
          **data_options: Any) -> TrainResult:
    """Train a model from scenes and labels and write it to ``out`` (``.safetensors``).

    The Python face of ``geors train detector|gate|segmenter``: the same defaults, checks and outputs.

    Args:
        kind: ``"detector"``, ``"gate"``, ``"segmenter"``, or a whole :class:`TrainingRun` (then ``data``,
            ``config`` and ``name`` come from it).
        out: model file to write; never one of the inputs.
        data: :class:`TrainData`; or give its fields as keyword arguments (``scenes=[...], labels=[...],
            class_field="class"``).
        config: :class:`geors.train.detector.TrainConfig` (detector, gate) or
            :class:`geors.train.segmenter.SegTrainConfig` (segmenter); None = the CLI's defaults
            (:func:`default_train_config`: a 10-minute budget for both).
        name: model name stored in the file (default: the stem of ``out``).
        progress: detector: a :class:`geors.progress.Progress` reporter of the steps (e.g.
            :class:`geors.train.schedule.TrainingBar`); segmenter: a callable of the phase records of
            :func:`geors.train.segmenter.train_segmenter`, or a Progress (started per phase).
        cancel: set this event to stop: training stops at its next step and :class:`geors.errors.Cancelled` is
            raised; no model file is written.
        notify: called with notes for the user before training (e.g. which class the unlabelled pixels
            became); default: logged at INFO.
        record: extra entries for the model's ``training`` metadata (the CLI records its command line).

    Returns:
        :class:`TrainResult`.

    Raises:
        GeorsError: bad input (exit code 2 on the command line), before training starts.
        Cancelled: ``cancel`` was set (or the progress reporter's ``cancelled``).
    """
    if isinstance(kind, TrainingRun):
        if data is not None or config is not None or data_options:
            raise ConfigError("give a TrainingRun alone, or a kind with data and config")
        run = kind if name is None else dataclasses.replace(kind, name=name)
    else:
        if data is not None and data_options:
            raise ConfigError("give data= or its fields as keyword arguments, not both")
        run = TrainingRun(kind=kind, data=data if data is not None else TrainData(**data_options), train=config,
                          name=name)
    return train_run(run, out, progress=progress, cancel=cancel, notify=notify, record=record)


def train_run(run: TrainingRun, out: str | os.PathLike, *, progress: Any = None,
              cancel: threading.Event | None = None, notify: Callable[[str], None] | None = None,
              record: dict[str, Any] | None = None) -> TrainResult:
    """:func:`train` for a :class:`TrainingRun`."""
    out = os.fspath(out)
    data = run.data.validate(run.kind)
    notify = notify or (lambda msg: log.info("%s", msg))
    check_outputs_not_inputs({"-o": out}, {"--scene": data.scenes, "--labels": data.labels,
                                           "--empty-scene": data.empty_scenes,
                                           "--labelled-area": data.labelled_area,
                                           "--corrections": data.corrections, "--reviewed-area": data.reviewed_area,
                                           "--init-from": getattr(run.train, "init_from", None)})
    parent = Path(out).parent
    if str(parent) and not parent.is_dir():
        raise OutputError(f"{out}: the output directory {parent} does not exist; create it first.")
    if run.kind == "segmenter":
        return _train_segmenter(run, data, out, progress, cancel, notify, record)
    return _train_detector(run, data, out, progress, cancel, record)


def _train_detector(run: TrainingRun, data: TrainData, out: str, progress: Any, cancel: threading.Event | None,
                    record: dict[str, Any] | None) -> TrainResult:
    from geors.models.registry import load_model, save_model
    from geors.train.detector import tiles_from_scenes, train_detector

    cfg = run.train
    if cfg.crop_size < 32:
        raise ConfigError("--crop must be >= 32 pixels.")
    if cfg.gate_input_scale < 1 or cfg.crop_size // cfg.gate_input_scale < 8:
        raise ConfigError(f"--gate-scale must be >= 1 and leave at least 8 px of the --crop "
                          f"({cfg.crop_size} // {cfg.gate_input_scale}).")
    tile_size, overlap = data.tile_size, data.overlap
    corrections = None
    if data.corrections is not None:
        from geors.train.corrections import read_corrections

        corrections = read_corrections(data.corrections, data.reviewed_area, data.scenes)
        # the run's model by default; empty crops (the reviewed background, the deleted boxes) train the
        # detector too unless the user says otherwise
        cfg = dataclasses.replace(cfg, init_from=cfg.init_from or corrections.model,
                                  empty_negatives=True if cfg.empty_negatives is None else cfg.empty_negatives)
        tile_size, overlap = tile_size or corrections.tile_size, corrections.overlap if overlap is None else overlap
    if cfg.init_from and (tile_size is None or overlap is None):
        _, init_meta = load_model(cfg.init_from, "cpu")
        tile_size = tile_size or int(init_meta.get("tile_size", 640))
        overlap = overlap if overlap is not None else int(init_meta.get("overlap", 128))
    tile_size = tile_size or 640  # the inference grid the model records (defaults of a new model)
    overlap = 128 if overlap is None else overlap
    try:
        if corrections is not None:
            tiles, classes, info = _correction_tiles(corrections, data, tile_size, overlap, cfg.split_seed)
        else:
            pairs = list(zip(data.scenes, data.labels, strict=True)) + [(s, None) for s in data.empty_scenes]
            tiles, classes, info = tiles_from_scenes(pairs, data.class_field, tile_size, overlap,
                                                     list(data.bands) if data.bands else None, seed=cfg.split_seed,
                                                     allow_ungeoreferenced=data.allow_ungeoreferenced,
                                                     rename=data.rename_class)
    except GeoreferenceError as exc:
        if data.allow_ungeoreferenced or "no geotransform" not in str(exc):
            raise
        raise GeoreferenceError(f"{exc} To train on it anyway with labels in pixel coordinates (VOC XML, CSV), "
                                "add --allow-ungeoreferenced.") from None
    gsd = data.gsd
    if gsd is not None and info["gsd_m"] is not None and abs(gsd - info["gsd_m"]) > 0.01 * info["gsd_m"]:
        raise ConfigError(f"--gsd {gsd} m contradicts the scenes' own ground sample distance "
                          f"({info['gsd_m']:.4g} m); leave --gsd out for georeferenced scenes.")
    reporter = _Cancellable(progress, cancel) if (progress is not None or cancel is not None) else None
    model, meta = train_detector(tiles, classes, cfg, meta={
        "name": run.name or Path(out).stem, "tile_size": tile_size, "overlap": overlap,
        "gsd_m": info["gsd_m"] if info["gsd_m"] is not None else gsd,
        "training": {"sources": info["sources"], "band_indexes": info["band_indexes"], "kind": run.kind,
                     "data": data.to_dict(), **({"corrections": info["corrections"]} if "corrections" in info
                                                else {}), **(record or {})},
    }, progress=reporter)
    if reporter is not None and reporter.cancelled:
        raise Cancelled(f"training cancelled after {meta['training']['steps']} steps; no model was written")
    path = save_model(model, meta, out)
    tr = meta["training"]
    calib = tr["gate_calibration"]
    sc = tr["score_calibration"]
    summary = {"model": str(path), "classes": classes, "anchor_scales": meta["anchor_scales"],
               **({"corrections": info["corrections"]["counts"]} if "corrections" in info else {}),
               "steps": tr["steps"], "planned_steps": tr["planned_steps"], "seconds": tr["seconds"],
               "stop_reason": tr["stop_reason"], "gate_threshold": meta["gate_threshold"],
               "gate_calibration": calib, "score_threshold": meta["score_threshold"],
               "validation": tr["validation"], "best_val_AP50": tr["best_val_AP50"],
               "validation_AP50": tr["validation_AP50"], "validation_F1": tr["validation_F1"]}
    gate = (f"gate threshold {calib['gate_threshold']:.4g} (passes {calib['achieved_recall']:.2f} of "
            f"{calib['n_pos_tiles']} validation images with objects)" if calib["status"] == "calibrated"
            else f"GATE DISABLED: {calib['reason']}")
    score = (f"score threshold {sc['score_threshold']:.2f}" if sc["status"] == "calibrated"
             else "score threshold: the default 0.3 (not calibrated)")
    command = f"geors detect SCENE.tif -o OUT.gpkg --model {path}"
    if calib["status"] != "calibrated":
        command += "   (no gate: every tile goes to the detector)"
    line = tr["validation_summary"]
    messages = (f"Model written to {path} ({gate}; {score}); {tr['steps']} steps in {tr['seconds'] / 60:.1f} min "
                f"({tr['stop_reason']}).", f"{line[:1].upper()}{line[1:]}. Run it with: {command}")
    return TrainResult(kind=run.kind, model=Path(path), classes=tuple(classes), steps=int(tr["steps"]),
                       seconds=float(tr["seconds"]), stop_reason=tr["stop_reason"],
                       validation_ap50=tr["validation_AP50"], validation_f1=tr["validation_F1"],
                       validation_iou=None, validation_miou=None, gate_threshold=meta["gate_threshold"],
                       score_threshold=meta["score_threshold"], calibration={"gate": calib, "score": sc},
                       summary=summary, messages=messages, metadata=meta)


def _correction_tiles(corrections, data: TrainData, tile_size: int, overlap: int, seed: int):
    """Training tiles of an analyst's corrections (:mod:`geors.train.corrections`), plus ``--empty-scene`` images."""
    from geors.train.corrections import correction_tiles
    from geors.train.detector import tiles_from_scenes

    tiles, classes, info = correction_tiles(corrections, tile_size, overlap)
    if data.empty_scenes:
        empty, _, extra = tiles_from_scenes([(s, None) for s in data.empty_scenes], None, tile_size, overlap,
                                            corrections.bands, seed=seed)
        tiles += empty
        info["sources"] += extra["sources"]
    return tiles, classes, info


def _segmenter_progress(progress: Any, cancel: threading.Event | None) -> Callable[[dict], None] | None:
    """The record callable :func:`train_segmenter` takes, from a callable or a Progress, checking ``cancel``."""
    state: dict[str, Any] = {"phase": None, "step": 0}

    def report(rec: dict) -> None:
        if (cancel is not None and cancel.is_set()) or bool(getattr(progress, "cancelled", False)):
            raise Cancelled(f"training cancelled at {rec.get('phase')} step {rec.get('step')}; no model was written")
        if progress is None:
            return
        if hasattr(progress, "advance"):
            if rec.get("phase") != state["phase"]:
                if state["phase"] is not None:
                    progress.close()
                progress.start(int(rec.get("steps") or 0), str(rec.get("phase")))
                state.update(phase=rec.get("phase"), step=0)
            step = int(rec.get("step") or 0)
            progress.advance(max(step - state["step"], 0), steps=rec.get("steps"),
                             **({"loss": rec["loss"]} if "loss" in rec else {}))
            state["step"] = max(step, state["step"])
        else:
            progress(rec)

    return report if (progress is not None or cancel is not None) else None


def _train_segmenter(run: TrainingRun, data: TrainData, out: str, progress: Any, cancel: threading.Event | None,
                     notify: Callable[[str], None], record: dict[str, Any] | None) -> TrainResult:
    from geors.models.registry import save_model
    from geors.train.seg_data import load_training_tiles
    from geors.train.segmenter import train_segmenter

    cfg = run.train
    if cfg.crop_size < 32 or cfg.batch_size < 1 or cfg.coarse_steps < 0 or cfg.fine_steps < 0:
        raise ConfigError("--crop must be >= 32 px, --batch-size >= 1 and the step counts >= 0.")
    cfg = cfg.validate()
    tile_size = data.tile_size or 640
    overlap = 128 if data.overlap is None else data.overlap
    small = list(data.small_classes)
    tiles, names, info = load_training_tiles(list(zip(data.scenes, data.labels, strict=True)),
                                             class_field=data.class_field,
                                             classes=list(data.classes) if data.classes else None,
                                             background=data.background,
                                             bands=list(data.bands) if data.bands else None,
                                             allow_ungeoreferenced=data.allow_ungeoreferenced,
                                             unlabelled=data.unlabelled, labelled_area=data.labelled_area)
    missing = [c for c in small if c not in names]
    if missing:
        raise ConfigError(f"--small-classes {missing} are not among the label classes {names}; "
                          f"check the spelling (class names of {data.labels[0]}).")
    if info["background"]:
        notify(f"pixels outside the labels: class {info['background']!r} (id {names.index(info['background'])})"
               + ("; --unlabelled ignore to leave them out" if data.unlabelled == "auto" else ""))
    t0 = time.perf_counter()
    meta_in = {
        "background": info["background"], "tile_size": tile_size, "overlap": overlap, "gsd_m": info["gsd_m"],
        "band_indexes": info["band_indexes"],
        "normalisation": {"method": "percentile_stretch", "percentiles": [2, 98], "scope": "scene", "range": [0, 1],
                          "training_stretch": info["stretch"]},
        "training": {"sources": info["sources"], "label_pixels": info["label_pixels"], "kind": run.kind,
                     "data": data.to_dict(), **(record or {})},
    }
    if run.name:
        meta_in["name"] = run.name
    try:  # the progress callable raises Cancelled when cancel is set
        model, meta = train_segmenter(tiles, names, small, cfg, progress=_segmenter_progress(progress, cancel),
                                      meta=meta_in)
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    path = save_model(model, meta, out)
    tr = meta["training"]
    val = tr["validation"]
    seconds = round(time.perf_counter() - t0, 1)
    steps = int(tr["coarse"]["steps"]) + int(tr["fine"]["steps"])
    summary = {"model": str(path), "classes": names, "small_classes": small, "background": info["background"],
               "label_pixels": info["label_pixels"], "coarse_steps": tr["coarse"]["steps"],
               "fine_steps": tr["fine"]["steps"], "fine_skipped": tr["fine"].get("skipped"),
               "validation_iou": val.get("iou"), "validation_miou": val.get("miou"), "seconds": seconds}
    messages = ()
    if val.get("iou"):
        messages = ("validation IoU per class: " + ", ".join(
            f"{c} {v:.3f}" for c, v in val["iou"].items() if v is not None),)
    return TrainResult(kind=run.kind, model=Path(path), classes=tuple(names), steps=steps, seconds=seconds,
                       stop_reason=None, validation_ap50=None, validation_f1=None, validation_iou=val.get("iou"),
                       validation_miou=val.get("miou"), gate_threshold=None, score_threshold=None, calibration={},
                       summary=summary, messages=messages, metadata=meta)
