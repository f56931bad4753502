"""The one place that orchestrates: scenes -> tiles -> stage -> seams -> GeoPackage, for every command.

``geors run``/``detect``/``masks``/``label``/``tiles``/``segment`` and
:func:`geors.run` all come through :func:`process_scenes`, so each gets the same
things: inputs expanded (files, folders, globs, list files, VRTs), every scene
and option checked before the output is touched, Dask execution with bounded
memory, the tile ledger and ``--resume``, progress, cancellation, seams applied
once (:func:`geors.merge.apply_seams`, in the worker, after the stage), and the
run record (effective configuration, scene fingerprints, model sha256).

Execution: batches of tiles are submitted as futures and written as they
complete, with at most ``2 x workers`` batches in flight (memory = in-flight
tiles x tile size, never the scene size). Futures keep every worker busy across
batch and scene boundaries; locally they come from a thread pool (Dask's local
threaded scheduler only offers compute-everything-then-return, which drains the
workers between windows), on a cluster from ``dask.distributed``
(``scheduler="local"`` starts a LocalCluster, ``tcp://...`` joins one).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from geors import faults
from geors.config import ExecutionConfig, PipelineConfig, TilingConfig
from geors.crs import same_crs
from geors.errors import (
    Cancelled,
    ConfigError,
    GeorsError,
    ModelError,
    ProcessingError,
    SceneReadError,
)
from geors.execution import (
    Executor,
    check_memory,
    check_tile_count,
    configure_threads,
    estimate_peak_memory,
    with_batch_size,
)
from geors.held_log import release_held
from geors.inputs import FINGERPRINT_VERSION, RASTER_SUFFIXES, expand_inputs, open_scenes, scene_fingerprint
from geors.merge import apply_seams
from geors.outputs import (
    begin_run,
    check_continuation,
    check_raster_output,
    close_writers,
    open_writers,
    read_output_state,
    resolve_outputs,
    result_key,
    tiles_left,
)
from geors.paths import check_outputs_not_inputs
from geors.progress import NullProgress, Progress
from geors.raster import Scene
from geors.results import TileResult
from geors.stage_contract import Stage, StageGroup, TileBatch
from geors.summary import RunSummary, tally
from geors.tiling import Tile, TileGrid
from geors.vector import GeoPackageWriter

log = logging.getLogger(__name__)

# expand_inputs, scene_fingerprint, RASTER_SUFFIXES (geors.inputs), RunSummary (geors.summary) and
# estimate_peak_memory (geors.execution) are part of this module's API too: the pipeline is where users look.
__all__ = ["run", "build_stage", "process_scenes", "iter_tile_batches", "expand_inputs", "scene_fingerprint",
           "RASTER_SUFFIXES", "RunSummary", "estimate_peak_memory"]


# ----------------------------------------------------------------------------- stages


def build_stage(config: PipelineConfig) -> Stage:
    """The stage(s) a configuration asks for: detection (+ masks) and/or segmentation, in one pass."""
    from geors.stages import DetectStage

    stages: list = []
    device = config.execution.device
    if config.detect is not None:
        check_detector_file(config.detect.model, tile_given=config.tiling.tile_size is not None)
        stages.append(DetectStage(config.detect, config.masks, device=device))
    if config.segment is not None:
        from geors.segment import SegmentStage

        stages.append(SegmentStage(config.segment, device=device))
    if not stages:
        raise ConfigError("nothing to do: the configuration has neither [detect] nor [segment]")
    return stages[0] if len(stages) == 1 else StageGroup(stages)


def check_detector_file(model: str | os.PathLike | None, tile_given: bool = False) -> None:
    """What a detector's file says about itself, checked from its header before any output exists: it is a
    detector (a segmenter given as ``--model`` failed on every tile), it names its classes (one per output of
    the network), and its tile size and overlap are usable. Raises :class:`ModelError` naming the file."""
    from geors.config import MAX_TILE_SIZE
    from geors.models.registry import get_model, read_metadata

    path = get_model(model)
    meta = read_metadata(path)
    arch = meta.get("architecture", "r2cnn")
    if arch != "r2cnn":
        what = "a segmenter: give it to --segmenter" if arch == "c2fnet" else "not a detector"
        raise ModelError(f"{path}: --model takes a detector (R2-CNN, from geors train detector); this file is a "
                         f"{arch} model ({what}).")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise ModelError(f"{path}: the model's metadata lists no usable class names (classes: {classes!r}); "
                         "the file is damaged or was not written by geors train. Use another --model.")
    n = (meta.get("arch_args") or {}).get("num_classes")
    if isinstance(n, int) and n != len(classes):
        raise ModelError(f"{path}: the model's network has {n} class output(s) but its metadata names "
                         f"{len(classes)} class(es) ({', '.join(classes)}); the file is damaged. Use another --model.")
    size, overlap = meta.get("tile_size"), meta.get("overlap", 0)
    size_ok = isinstance(size, int) and not isinstance(size, bool) and 16 <= size <= MAX_TILE_SIZE
    if not tile_given and not size_ok:
        raise ModelError(f"{path}: the model's metadata tile_size {size!r} is not a tile size (16 to "
                         f"{MAX_TILE_SIZE} px); give --tile, or use another --model.")
    if not (isinstance(overlap, int) and not isinstance(overlap, bool) and overlap >= 0
            and (not size_ok or overlap < size)):
        raise ModelError(f"{path}: the model's metadata overlap {overlap!r} is not usable (an integer >= 0 and "
                         f"below its tile_size {size!r}); give --overlap, or use another --model.")


def run(scenes: Sequence[str | os.PathLike | Scene] | str | os.PathLike, out: str | os.PathLike,
        config: PipelineConfig | None = None, *, progress: Progress | None = None,
        cancel: threading.Event | None = None, command: str = "run") -> RunSummary:
    """Run the pipeline configured by ``config`` over ``scenes`` into the GeoPackage ``out``.

    The Python face of ``geors run``: the same defaults, checks and outputs.

    Args:
        scenes: paths, folders, globs, list files or opened scenes (or one of them).
        out: output ``.gpkg`` (a folder with ``output.per_scene``).
        config: :class:`geors.config.PipelineConfig`; default: detect with the built-in model.
        progress: a :class:`geors.progress.Progress` reporter.
        cancel: set this event to stop after the batches in flight (raises :class:`geors.errors.Cancelled`).
        command: name recorded in ``geors_runs``.
    """
    config = (config or PipelineConfig()).validate()
    if isinstance(scenes, str | os.PathLike | Scene):
        scenes = [scenes]
    return process_scenes(scenes, out, build_stage(config), config, progress=progress, cancel=cancel,
                          command=command)


# ----------------------------------------------------------------------------- execution


def iter_tile_batches(tiles: Sequence[Tile], batch_size: int) -> Iterator[list[Tile]]:
    for i in range(0, len(tiles), batch_size):
        yield list(tiles[i:i + batch_size])


def run_batch(scene: Scene, tiles: list[Tile], inputs: list | None, stage: Stage, threads: int) -> list[TileResult]:
    """Runs in a worker: read the tiles, skip nodata ones, call the stage, apply the seam rules."""
    configure_threads(threads)
    t0 = time.perf_counter()
    images = [scene.read_tile(t) for t in tiles]
    read_s = (time.perf_counter() - t0) / len(tiles)
    results: dict[str, TileResult] = {}
    todo = [k for k, img in enumerate(images) if img.valid.any() or not stage.skip_nodata]
    for k, t in enumerate(tiles):
        if k not in todo:
            results[t.id] = TileResult(scene.name, t.id, t.window, "nodata", seconds=read_s,
                                       stage_seconds={"read": read_s})
    if todo:
        batch = TileBatch(scene, [tiles[k] for k in todo], [images[k] for k in todo],
                          None if inputs is None else [inputs[k] for k in todo])
        try:
            out = stage(batch)
            configure_threads(threads)  # a stage that imported torch on its first call
        except GeorsError:
            raise  # bad input discovered while reading (an unreadable window...): stop with its message
        except Exception as exc:  # a model/engine failure: record it, --resume retries these tiles
            log.exception("%s: tiles %s failed", scene.name, [t.id for t in batch.tiles])
            out = [TileResult(scene.name, t.id, t.window, "failed", message=repr(exc)[:500]) for t in batch.tiles]
        by_id = {r.tile_id: r for r in out}
        for k in todo:
            t = tiles[k]
            r = by_id.get(t.id) or TileResult(scene.name, t.id, t.window, "failed",
                                              message=f"stage {stage.name} returned no result for this tile")
            t1 = time.perf_counter()
            if r.status != "failed":
                apply_seams(t, images[k], r, tuple(stage.classes))
            r.stage_seconds["read"] = read_s
            r.stage_seconds["seams"] = time.perf_counter() - t1
            r.seconds = sum(r.stage_seconds.values())
            results[t.id] = r
    return [results[t.id] for t in tiles]


# ----------------------------------------------------------------------------- the run


def process_scenes(
    scenes: Sequence[str | os.PathLike | Scene],
    out: str | os.PathLike,
    stage: Stage,
    config: PipelineConfig | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    command: str = "",
) -> RunSummary:
    """Run ``stage`` over every tile of every scene and write to ``out`` (GeoPackage).

    The lower-level entry of :func:`run` for any :class:`geors.stage_contract.Stage`;
    ``config``'s tiling, execution and output parts apply (its detect/masks/
    segment parts only describe the stage and are recorded).

    Every scene and option is checked, and every scene's stretch estimated,
    before the output is created or opened for writing. A batch's features and
    ledger rows are committed together, so an interrupted run leaves a valid
    file that ``output.resume`` continues.

    Raises:
        GeorsError: bad input (exit code 2), before anything is written.
        Cancelled: ``cancel`` was set (or the progress reporter asked); the
            batches in flight were written first.
    """
    config = (config or PipelineConfig()).validate()
    progress = progress or NullProgress()
    faults.checkpoint("start")
    t_start = time.perf_counter()
    tiling: TilingConfig = config.tiling
    opened, skipped = _open_scenes(scenes, config)
    stage.prepare(opened)  # models load and bands are checked before the output is touched
    config = with_batch_size(config)
    default_size, default_overlap = stage.default_tiling()
    size = tiling.tile_size or default_size
    overlap = tiling.overlap if tiling.overlap is not None else min(default_overlap, size // 2)
    grids = {s.name: TileGrid(s, size, overlap) for s in opened}  # validates overlap < tile
    check_memory(size, config.execution)
    check_tile_count({str(s.path): len(g) for s, g in zip(opened, grids.values(), strict=True)}, size)
    models = stage.describe()  # once per run: it hashes the model and checkpoint files
    key = result_key(stage, (size, overlap), tiling.bands, models)
    fingerprints = {s.name: scene_fingerprint(s) for s in opened}
    targets = resolve_outputs(Path(out), opened, config.output.per_scene)
    rasters = _raster_outputs(config, opened, targets)
    check_outputs_not_inputs({"-o": set(targets.values()), "--raster-out": rasters.values()},
                             _input_files(config, opened, models))
    states = {p: read_output_state(p) for p in set(targets.values())}
    for p, st in states.items():
        check_continuation(p, st, [s for s in opened if targets[s.name] == p], fingerprints, key,
                           config.output.resume, config.output.overwrite, grids)

    # the executor is a check too: an unreachable --scheduler is refused before the output is touched (and
    # before --overwrite deletes anything)
    executor = Executor(config.execution)
    release_held()  # every check passed: the warnings they logged are worth reading (geors.held_log)

    # ---- from here on the output is touched
    try:
        writers = open_writers(Path(out), targets, opened, config.output, stage.layers)
    except BaseException:
        executor.close()
        raise
    first = next(iter(writers.values()))
    summary = RunSummary(run_id=first.run_id, output=str(out), scenes_skipped=skipped, crs=first.crs.name)
    summary.reprojected_scenes = [s.name for s in opened if not same_crs(writers[targets[s.name]].crs, s.crs)]
    if summary.reprojected_scenes:
        log.warning("%d scene(s) are in another CRS than the output (%s) and are reprojected into it: %s",
                    len(summary.reprojected_scenes), summary.crs, ", ".join(summary.reprojected_scenes))
    record = {
        "config": config.to_dict(), "stage": stage.name, "tile_size": size, "overlap": overlap,
        "result_key": key, "skipped": skipped,
        "scenes": [{"name": s.name, "path": str(s.path), "fingerprint": fingerprints[s.name],
                    "fingerprint_version": FINGERPRINT_VERSION, "crs": s.crs_name, "stretch": s.stats.to_dict()}
                   for s in opened],
    }
    status = "failed"
    try:
        for p, w in writers.items():
            begin_run(w, [s.name for s in opened if targets[s.name] == p], states[p], config.output,
                      command or stage.name, record, models)
        plan = []
        for s in opened:
            tiles = list(grids[s.name])
            todo = tiles_left(writers[targets[s.name]], s.name, tiles, config.output.resume)
            summary.tiles += len(tiles)
            summary.skipped_resume += len(tiles) - len(todo)
            plan.append((s, todo))
        summary.scenes = len(opened)
        status = _execute(plan, stage, config.execution, executor, writers, targets, summary, progress, cancel,
                          rasters, _model_name(models))
    except (KeyboardInterrupt, Cancelled):
        status = "cancelled"
        raise
    finally:
        summary.seconds = time.perf_counter() - t_start
        summary.status = status
        executor.close()
        close_writers(writers, status)
    if status == "cancelled":
        raise Cancelled(f"cancelled: {summary.saved} of {summary.tiles} tiles saved in {out}", summary)
    return summary


def _open_scenes(scenes, config: PipelineConfig) -> tuple[list[Scene], list[dict]]:
    """Every scene opened and checked (with ``output.strict`` one that cannot be is an error, else skipped);
    at least one opens, and no two share a file name (outputs identify scenes by file name)."""
    opened, skipped = open_scenes(scenes, config.tiling.bands, config.output.strict)
    if not opened:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped) or "no scene given"
        raise SceneReadError(f"no scene could be opened ({reasons})")
    names = [s.name for s in opened]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"several scenes share the file name {dup[0]!r}; outputs identify scenes by file name, "
                          "so rename them, use --per-scene, or run them into separate GeoPackages.")
    return opened, skipped


def _execute(plan, stage: Stage, execution: ExecutionConfig, executor: Executor, writers, targets,
             summary: RunSummary, progress: Progress, cancel: threading.Event | None,
             rasters: dict[str, Path] | None = None, model: str = "") -> str:
    """Submit batches across scenes, write them as they complete; returns the run status."""
    threads = execution.threads_per_worker()
    rasters = rasters or {}
    remaining = {s.name: 0 for s, _ in plan}

    def tasks():
        for scene, tiles in plan:
            for b in iter_tile_batches(tiles, execution.batch_size):
                yield scene, b

    for scene, tiles in plan:
        remaining[scene.name] = -(-len(tiles) // execution.batch_size)
    statuses: dict[str, dict[str, int]] = {s.name: {} for s, _ in plan}
    todo = tasks()
    done_q: queue.Queue = queue.Queue()
    in_flight = 0
    stopping = False

    def submit_next() -> bool:
        nonlocal in_flight
        task = next(todo, None)
        if task is None:
            return False
        scene, tiles = task
        inputs = stage.tile_inputs(scene, tiles)
        fut = executor.submit(run_batch, scene, tiles, inputs, stage, threads)
        fut.add_done_callback(lambda f, task=task: done_q.put((task, f)))
        in_flight += 1
        return True

    progress.start(sum(len(t) for _, t in plan), desc=", ".join(s.name for s, _ in plan)[:60])
    for scene, tiles in plan:
        if not tiles:
            _scene_finished(scene, writers[targets[scene.name]], stage, None, rasters.get(scene.name))
    while in_flight < executor.slots and submit_next():
        pass
    error: BaseException | None = None
    watch = _WorkerWatch(executor)
    while in_flight:
        try:
            (scene, tiles), fut = done_q.get(timeout=0.2)
        except queue.Empty:
            if not stopping and ((cancel is not None and cancel.is_set()) or getattr(progress, "cancelled", False)):
                stopping = True
                log.warning("cancelling: finishing the %d batch(es) in flight", in_flight)
            gone = watch.gone_for()
            if stopping and gone >= WORKERS_GONE_CANCEL_S:
                log.warning("the cluster's workers are gone: %d batch(es) in flight are not written (--resume "
                            "redoes them)", in_flight)
                break
            if gone >= WORKERS_GONE_FAIL_S:
                error = error or ProcessingError(
                    f"the Dask cluster has had no worker for {gone:.0f} s with {in_flight} batch(es) in flight; "
                    "what was written is valid: continue with --resume once workers are back")
                break
            continue
        in_flight -= 1
        try:
            results = fut.result()
        except BaseException as exc:  # noqa: BLE001 - a GeorsError from a worker, or a crashed worker
            error = error or exc
            stopping = True
            continue
        writer = writers[targets[scene.name]]
        writer.write_results(results, model=model, crs=scene.crs)
        tally(summary, results)
        summary.megapixels += sum(float(t.core.width) * float(t.core.height) for t in tiles) / 1e6
        progress.advance(len(results), scene=scene.name, detections=summary.detections)
        faults.checkpoint("batch")
        remaining[scene.name] -= 1
        for r in results:
            statuses[scene.name][r.status] = statuses[scene.name].get(r.status, 0) + 1
        if remaining[scene.name] == 0:
            _scene_finished(scene, writer, stage, statuses[scene.name], rasters.get(scene.name))
        if not stopping and ((cancel is not None and cancel.is_set()) or getattr(progress, "cancelled", False)):
            stopping = True
        if not stopping:
            submit_next()
    progress.close()
    if error is not None:
        raise error
    return "cancelled" if stopping else "finished"


def _input_files(config: PipelineConfig, scenes: list[Scene], info: dict) -> dict[str, list]:
    """Every file a run reads, by the option that named it: scenes (a VRT's sources too), model, SAM
    checkpoint, segmenter, boxes (as given, and as the stage found them)."""
    from geors.inputs import scene_files

    flat = dict(info)
    for v in info.values():
        if isinstance(v, dict):
            flat.update(v)
    return {
        "SCENES": [f for s in scenes for f in scene_files(s)],
        "--model": [config.detect.model if config.detect else None, flat.get("model_path")],
        "--sam": [config.masks.engine if config.masks else None, flat.get("mask_checkpoint")],
        "--segmenter": [config.segment.segmenter if config.segment else None],
        "--boxes": [flat.get("boxes")],
    }


#: Seconds without any worker after which a cancelled run stops waiting for its batches in flight, and a
#: running one fails (a cluster can lose its workers: killed, out of memory, a scheduler restart).
WORKERS_GONE_CANCEL_S = 3.0
WORKERS_GONE_FAIL_S = 120.0


class _WorkerWatch:
    """How long a cluster has had no worker (asked at most once a second; 0 for local executors)."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self.asked = 0.0
        self.since: float | None = None

    def gone_for(self) -> float:
        now = time.monotonic()
        if now - self.asked >= 1.0:
            self.asked = now
            alive = self.executor.workers_alive()
            if alive == 0:
                self.since = self.since or now
            else:
                self.since = None
        return 0.0 if self.since is None else now - self.since


def _model_name(info: dict) -> str:
    """The detector's name from a stage's provenance (describe() is computed once per run: it hashes files)."""
    return str(info.get("model") or next((v.get("model") for v in info.values() if isinstance(v, dict)
                                          and v.get("model")), ""))


def _raster_outputs(config: PipelineConfig, scenes: list[Scene], targets: dict[str, Path]) -> dict[str, Path]:
    """Class GeoTIFF per scene for ``--raster-out`` (``<stem>_<scene>.tif`` with several scenes); checked
    before the output is touched: the folder exists, no raster is an input or another output."""
    if config.segment is None or not config.segment.raster_out:
        return {}
    from geors.segment import raster_paths

    paths = raster_paths(config.segment.raster_out, scenes)
    for s in scenes:
        # a derived product: replaced when the run replaces or continues its GeoPackage, else never silently
        check_raster_output(paths[s.name], s.path, overwrite=config.output.overwrite or config.output.resume,
                            option="--raster-out")
        if paths[s.name].resolve() == targets[s.name].resolve():
            raise ConfigError(f"{paths[s.name]}: --raster-out must differ from the output GeoPackage")
    return paths


def _scene_finished(scene: Scene, writer: GeoPackageWriter, stage: Stage, statuses: dict | None = None,
                    raster_out: Path | None = None) -> None:
    """Work that needs a scene's every tile: the dissolve of segmentation polygons across core boundaries,
    the class GeoTIFF painted from them (``--raster-out``), and a warning when the gate skipped every tile
    (a gate calibrated on other imagery can hide all objects)."""
    statuses = statuses or {}
    if statuses.get("gated") and not statuses.get("done"):
        log.warning("%s: the gate skipped all %d tiles with data, so nothing was detected. If objects are "
                    "expected, rerun with --no-gate (or a lower --gate-threshold) into another output.",
                    scene.name, statuses["gated"])
    if "segmentation" in stage.layers:
        from geors.merge import dissolve_scene

        dissolve_scene(writer, scene.name)
        if raster_out is not None:
            from geors.segment import paint_class_raster

            seg = next(s for s in getattr(stage, "stages", [stage]) if hasattr(s, "colours"))
            paint_class_raster(writer.path, scene, raster_out, seg.classes, seg.colours)
