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

import concurrent.futures
import glob
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geors import faults
from geors.config import ExecutionConfig, PipelineConfig, TilingConfig
from geors.errors import Cancelled, ConfigError, GeorsError, OutputError, SceneReadError
from geors.merge import apply_seams
from geors.progress import NullProgress, Progress
from geors.raster import Scene, open_scene
from geors.results import TileResult
from geors.stage import Stage, StageGroup, TileBatch
from geors.tiling import Tile, TileGrid
from geors.vector import GeoPackageWriter

log = logging.getLogger(__name__)

__all__ = ["run", "build_stage", "process_scenes", "expand_inputs", "scene_fingerprint", "RunSummary",
           "iter_tile_batches", "RASTER_SUFFIXES"]

#: File suffixes taken as rasters when a folder is searched.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png")

# Result-affecting provenance keys compared on --resume, and the option a user changes for each.
_RESUME_KEYS = {
    "stage": "the command", "tile_size": "--tile", "overlap": "--overlap", "bands": "--bands",
    "model_sha256": "--model", "gate_threshold": "--gate-threshold / --no-gate",
    "score_threshold": "--score-threshold", "mask_method": "--sam", "segmenter_sha256": "--segmenter",
    "boxes": "--boxes", "simplify_px": "--simplify", "multipart": "--all-parts",
}


# ----------------------------------------------------------------------------- summary


@dataclass
class RunSummary:
    """What a run did; ``to_dict`` is the machine-readable summary every command prints."""

    run_id: str
    output: str
    status: str = "running"
    scenes: int = 0
    scenes_skipped: list[dict] = field(default_factory=list)
    tiles: int = 0
    done: int = 0
    gated: int = 0
    nodata: int = 0
    failed: int = 0
    skipped_resume: int = 0
    detections: int = 0
    instances: int = 0
    segments: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    mask_methods: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    crs: str = ""
    reprojected_scenes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # command-specific results (e.g. the label raster written)

    @property
    def processed(self) -> int:
        return self.done + self.gated

    @property
    def saved(self) -> int:
        """Tiles whose results are committed (done, gated or nodata), this run and earlier ones."""
        return self.done + self.gated + self.nodata + self.skipped_resume

    def to_dict(self) -> dict:
        d = asdict(self)
        d["processed"] = self.processed
        d["mp_per_s"] = round(self.megapixels / self.seconds, 3) if self.seconds else None
        d["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        return d

    def lines(self) -> list[str]:
        """The summary for people (stderr)."""
        out = [f"{self.status}: {self.scenes} scene(s) -> {self.output}  (run {self.run_id})",
               f"  tiles: {self.tiles} = {self.done} done, {self.gated} gated, {self.nodata} nodata, "
               f"{self.failed} failed, {self.skipped_resume} already done"]
        feats = [f"{n} {k}" for k, n in (("detections", self.detections), ("instances", self.instances),
                                          ("segments", self.segments)) if n]
        if feats:
            out.append("  features: " + ", ".join(feats))
        if self.per_class:
            out.append("  per class: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_class.items())))
        if self.mask_methods:
            out.append("  masks by: " + ", ".join(f"{k} {v}" for k, v in sorted(self.mask_methods.items()))
                       + (f"  ({self.fallbacks} fell back to the box)" if self.fallbacks else ""))
        if self.seconds:
            shares = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.stage_seconds.items()))
            out.append(f"  {self.seconds:.1f} s, {self.megapixels:.1f} MP, "
                       f"{self.megapixels / self.seconds:.2f} MP/s" + (f"  (worker time: {shares})" if shares else ""))
        if self.reprojected_scenes:
            out.append(f"  reprojected into {self.crs}: {', '.join(self.reprojected_scenes)}")
        for s in self.scenes_skipped:
            out.append(f"  skipped {s['path']}: {s['reason']}")
        return out


# ----------------------------------------------------------------------------- inputs


def expand_inputs(items: Iterable[str | os.PathLike | Scene]) -> tuple[list[str | Scene], list[dict]]:
    """Scene paths from what users type: files, folders (searched recursively for rasters), quoted globs,
    VRT mosaics (opened as one scene) and text files listing paths (``.txt``/``.lst`` or ``@list``).

    Returns:
        ``(scenes, problems)``: paths (or :class:`Scene` objects passed through) in order without
        duplicates, and ``{"path", "reason"}`` for inputs that matched nothing.
    """
    out: list[str | Scene] = []
    problems: list[dict] = []
    for item in items:
        if isinstance(item, Scene):
            out.append(item)
            continue
        s = str(item)
        p = Path(s[1:] if s.startswith("@") else s).expanduser()
        if s.startswith("@") or (p.is_file() and p.suffix.lower() in (".txt", ".lst")):
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                problems.append({"path": s, "reason": f"cannot read the list file: {exc.strerror}"})
                continue
            listed = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
            sub, sub_problems = expand_inputs(str(p.parent / x) if not Path(x).is_absolute() else x
                                              for x in listed)
            out.extend(sub)
            problems.extend(sub_problems)
        elif p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES
                           and not f.name.startswith("."))
            if not found:
                problems.append({"path": s, "reason": f"folder holds no raster ({', '.join(RASTER_SUFFIXES)})"})
            out.extend(found)
        elif not p.exists() and any(c in s for c in "*?["):
            found = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not found:
                problems.append({"path": s, "reason": "no file matches this pattern"})
            out.extend(f for f in found if Path(f).is_file())
        else:
            out.append(s)
    seen: set = set()
    unique = []
    for x in out:
        key = x if isinstance(x, Scene) else os.path.abspath(x)
        if key not in seen:
            seen.add(key)
            unique.append(x)
    return unique, problems


def scene_fingerprint(scene: Scene) -> str:
    """Identity of a scene's content for ``--resume``: grid, CRS, bands, dtype, file size and header bytes.

    Two different rasters with the same file name get different fingerprints; a
    copy of the same file (other path or mtime) keeps its fingerprint.
    """
    h = hashlib.sha256()
    p = Path(scene.path)
    h.update(json.dumps([scene.width, scene.height, list(scene.transform)[:6], scene.crs.to_wkt() if scene.crs
                         else "", list(scene.band_indexes), str(scene.dtype)], default=str).encode())
    try:
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 16))
    except OSError:
        pass
    return h.hexdigest()[:32]


def _open_scenes(items, bands, strict: bool) -> tuple[list[Scene], list[dict]]:
    paths, problems = expand_inputs(items)
    if problems and strict:
        raise SceneReadError(f"{problems[0]['path']}: {problems[0]['reason']}")
    opened: list[Scene] = []
    for item in paths:
        try:
            scene = item if isinstance(item, Scene) else open_scene(item, bands=list(bands) if bands else None)
            _ = scene.stats  # the scene-wide stretch reads pixels: a truncated file fails here, not mid-run
            opened.append(scene)
        except GeorsError as exc:
            if strict:
                raise
            problems.append({"path": str(getattr(item, "path", item)), "reason": str(exc)})
            log.error("skipping %s", exc)
    return opened, problems


# ----------------------------------------------------------------------------- stages


def build_stage(config: PipelineConfig) -> Stage:
    """The stage(s) a configuration asks for: detection (+ masks) and/or segmentation, in one pass."""
    from geors.stages import DetectStage

    stages: list = []
    device = config.execution.device
    if config.detect is not None:
        stages.append(DetectStage(config.detect, config.masks, device=device))
    if config.segment is not None:
        from geors.segment import SegmentStage

        stages.append(SegmentStage(config.segment, device=device))
    if not stages:
        raise ConfigError("nothing to do: the configuration has neither [detect] nor [segment]")
    return stages[0] if len(stages) == 1 else StageGroup(stages)


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


_THREADS: dict[str, int] = {}


def _configure_threads(n: int) -> None:
    """torch and OpenCV threads of this process, once per value (avoids oversubscription with several
    workers). A library is only configured once something imported it: a stage that needs no torch
    does not pay for importing it."""
    import sys

    for name in ("torch", "cv2"):
        mod = sys.modules.get(name)
        if mod is None or _THREADS.get(name) == n:
            continue
        if name == "torch":
            mod.set_num_threads(n)
        else:
            mod.setNumThreads(n)
        _THREADS[name] = n


def _run_batch(scene: Scene, tiles: list[Tile], inputs: list | None, stage: Stage, threads: int) -> list[TileResult]:
    """Runs in a worker: read the tiles, skip nodata ones, call the stage, apply the seam rules."""
    _configure_threads(threads)
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
            _configure_threads(threads)  # a stage that imported torch on its first call
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


class _Executor:
    """Futures for batches: synchronous here, a thread pool here, or a Dask distributed cluster."""

    def __init__(self, execution: ExecutionConfig):
        self.cluster = None
        self.client = None
        self.pool = None
        sched = execution.scheduler
        if sched == "synchronous" or (sched in (None, "threads") and execution.workers <= 1):
            self.kind = "synchronous"
        elif sched in (None, "threads"):
            self.kind = "threads"
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=execution.workers,
                                                              thread_name_prefix="geors")
        else:
            from geors.errors import require

            distributed = require("distributed", "distributed", "Running on a Dask cluster")
            self.kind = "distributed"
            if sched == "local":
                self.cluster = distributed.LocalCluster(n_workers=execution.workers, threads_per_worker=1,
                                                        processes=True, dashboard_address=None,
                                                        silence_logs=logging.WARNING)
                self.client = distributed.Client(self.cluster)
            elif isinstance(sched, str):
                try:
                    self.client = distributed.Client(sched, timeout="20s")
                except OSError as exc:
                    raise ConfigError(f"cannot reach the Dask scheduler at {sched}: {exc}. Is it running?") from None
            else:
                self.client = sched
        self.slots = 1 if self.kind == "synchronous" else 2 * max(1, execution.workers)

    def submit(self, fn, *args):
        if self.kind == "synchronous":
            fut: concurrent.futures.Future = concurrent.futures.Future()
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # delivered through the future like the other executors
                fut.set_exception(exc)
            return fut
        if self.kind == "threads":
            return self.pool.submit(fn, *args)
        return self.client.submit(fn, *args, pure=False)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.cluster is not None:
            self.client.close()
            self.cluster.close(timeout=30)


# ----------------------------------------------------------------------------- outputs and resume


def _read_state(path: Path) -> dict:
    """Read-only look at an existing output: ledger rows per scene and the recorded runs."""
    import sqlite3

    state = {"scenes": {}, "runs": []}
    if not path.is_file() or path.stat().st_size == 0:
        return state
    from geors.vector import recover_hot_journal

    recover_hot_journal(path)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return state
    try:
        tables = {r[0].lower() for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "geors_tiles" in tables:
            for scene, n in con.execute("SELECT scene, count(*) FROM geors_tiles WHERE status != 'failed' "
                                        "GROUP BY scene"):
                state["scenes"][scene] = n
        if "geors_runs" in tables:
            for run_id, command, cfg, models, status in con.execute(
                    "SELECT run_id, command, config, models, status FROM geors_runs ORDER BY started"):
                try:
                    cfg = json.loads(cfg or "{}")
                    models = json.loads(models or "{}")
                except json.JSONDecodeError:
                    cfg, models = {}, {}
                state["runs"].append({"run_id": run_id, "command": command, "config": cfg, "models": models,
                                      "status": status})
    except sqlite3.DatabaseError:
        pass  # the writer's own check names the problem
    finally:
        con.close()
    return state


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("classes",):
            out.update(_flat(v, ""))
        else:
            out[k] = v
    return out


def _result_key(stage: Stage, tiling: tuple[int, int], bands) -> dict:
    info = _flat(stage.describe())
    key = {"stage": stage.name, "tile_size": tiling[0], "overlap": tiling[1],
           "bands": list(bands) if bands else None}
    key.update({k: info.get(k) for k in _RESUME_KEYS if k in info})
    return key


def _check_continuation(path: Path, state: dict, scenes: list[Scene], fingerprints: dict, key: dict,
                        resume: bool, overwrite: bool) -> None:
    """Refuse silent duplicates and resumes that would mix other scenes or other options into a file."""
    for scene in scenes:
        n = state["scenes"].get(scene.name, 0)
        if not n:
            continue
        if not resume and not overwrite:
            raise OutputError(
                f"{path} already holds results for scene {scene.name} ({n} tiles). Running it again would "
                "duplicate every feature: add --resume to continue that run, --overwrite to replace that "
                "scene's results, or write to another output.")
        if not resume:
            continue
        recorded = [r for r in state["runs"] if any(
            isinstance(s, dict) and s.get("name") == scene.name for s in r["config"].get("scenes", []))]
        if not recorded:
            continue  # written by an older geors without fingerprints: only the tile grid is checked
        last = recorded[-1]
        rec_scene = next(s for s in last["config"]["scenes"] if isinstance(s, dict) and s.get("name") == scene.name)
        if rec_scene.get("fingerprint") and rec_scene["fingerprint"] != fingerprints[scene.name]:
            raise OutputError(
                f"{path}: --resume: scene {scene.name} ({scene.path}) is not the raster this output was made "
                f"from ({rec_scene.get('path')}): size, grid, CRS or content differ. Use the same file, "
                "or write to another output.")
        old = last["config"].get("result_key") or {}
        diff = [k for k in key if k in old and old[k] != key[k]]
        if diff:
            what = "; ".join(f"{_RESUME_KEYS.get(k, k)}: was {old[k]!r}, now {key[k]!r}" for k in diff)
            raise OutputError(
                f"{path}: --resume with other options than run {last['run_id']} would mix two results in one "
                f"file ({what}). Resume with the same options, or write to another output.")


def _resolve_outputs(out: Path, scenes: list[Scene], per_scene: bool) -> dict[str, Path]:
    if per_scene:
        if out.suffix.lower() == ".gpkg":
            raise OutputError(f"{out}: with --per-scene the output is a folder (one GeoPackage per scene), "
                              "not a .gpkg file.")
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; --per-scene writes one GeoPackage per scene "
                              "into a folder.")
        if not out.parent.exists():
            raise OutputError(f"{out}: the parent folder {out.parent} does not exist; create it first.")
        targets = {s.name: out / f"{Path(s.name).stem}.gpkg" for s in scenes}
    else:
        targets = {s.name: out for s in scenes}
    for s in scenes:
        t = targets[s.name]
        try:
            if t.exists() and Path(s.path).exists() and os.path.samefile(t, s.path):
                raise OutputError(f"{t}: is the input scene itself; geors never overwrites an input. "
                                  "Choose another output name.")
        except OSError:
            pass
    return targets


def _with_batch_size(config: PipelineConfig) -> PipelineConfig:
    """The configuration with the batch size decided (the device is known once the models are loaded)."""
    import sys

    if config.execution.batch_size is not None:
        return config
    torch = sys.modules.get("torch")
    on_gpu = (config.execution.device != "cpu" and torch is not None and torch.cuda.is_available())
    return config.replace(execution__batch_size=config.execution.resolved_batch_size(on_gpu))


# Measured with benchmarks/bench_pipeline.py (geors run, default model, box masks, CPU, PyPI torch):
# peak RSS 1,038 MiB at batch 1 and 1,684 MiB at batch 8 of 640 px tiles -> ~92 MiB per tile in flight
# (~235 bytes per tile pixel: float32 pixels, an RGB copy, the model's activations) on top of ~950 MiB
# for the process itself (Python, torch ~500 MiB, GDAL, the model).
PROCESS_BASE_BYTES = 950 * 2**20
BYTES_PER_TILE_PIXEL = 235


def estimate_peak_memory(tile_size: int, batch_size: int, workers: int = 1, processes: bool = False) -> dict:
    """What a run needs at its peak, in bytes: the process(es) plus the tiles in flight.

    Threads share one process; a LocalCluster has one process per worker.
    The figures are measured on CPU (see the constants); a GPU run holds its
    activations on the device instead.
    """
    in_flight = batch_size * (1 if workers <= 1 else 2 * workers)
    tiles = in_flight * tile_size * tile_size * BYTES_PER_TILE_PIXEL
    base = PROCESS_BASE_BYTES * (workers + 1 if processes else 1)
    return {"tiles_in_flight": in_flight, "tiles_bytes": tiles, "process_bytes": base, "total_bytes": base + tiles}


def _check_memory(tile_size: int, execution: ExecutionConfig) -> None:
    import psutil

    est = estimate_peak_memory(tile_size, execution.batch_size, execution.workers,
                               processes=execution.scheduler == "local")
    avail = psutil.virtual_memory().available
    if est["tiles_bytes"] > 0.8 * avail:
        raise ConfigError(
            f"--tile {tile_size} with --batch-size {execution.batch_size} and --workers {execution.workers} "
            f"needs about {est['tiles_bytes'] / 2**30:.1f} GiB of memory for the tiles in flight, more than the "
            f"{avail / 2**30:.1f} GiB available. Use a smaller --tile, --batch-size or --workers.")


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

    The lower-level entry of :func:`run` for any :class:`geors.stage.Stage`;
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
    opened, skipped = _open_scenes(scenes, tiling.bands, config.output.strict)
    if not opened:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped) or "no scene given"
        raise SceneReadError(f"no scene could be opened ({reasons})")
    names = [s.name for s in opened]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"several scenes share the file name {dup[0]!r}; outputs identify scenes by file name, "
                          "so rename them, use --per-scene, or run them into separate GeoPackages.")
    stage.prepare(opened)  # models load and bands are checked before the output is touched
    config = _with_batch_size(config)
    default_size, default_overlap = stage.default_tiling()
    size = tiling.tile_size or default_size
    overlap = tiling.overlap if tiling.overlap is not None else min(default_overlap, size // 2)
    grids = {s.name: TileGrid(s, size, overlap) for s in opened}  # validates overlap < tile
    _check_memory(size, config.execution)
    key = _result_key(stage, (size, overlap), tiling.bands)
    fingerprints = {s.name: scene_fingerprint(s) for s in opened}
    targets = _resolve_outputs(Path(out), opened, config.output.per_scene)
    states = {p: _read_state(p) for p in set(targets.values())}
    for p, st in states.items():
        _check_continuation(p, st, [s for s in opened if targets[s.name] == p], fingerprints, key,
                            config.output.resume, config.output.overwrite)

    # ---- from here on the output is touched
    if config.output.per_scene:
        Path(out).mkdir(exist_ok=True)
    models = stage.describe()
    out_crs = {}
    writers: dict[Path, GeoPackageWriter] = {}
    for p in dict.fromkeys(targets.values()):
        first = next(s for s in opened if targets[s.name] == p)
        crs = config.output.crs or first.crs
        writers[p] = GeoPackageWriter(p, crs, layers=stage.layers)
        out_crs[p] = writers[p].crs
    run_id = next(iter(writers.values())).run_id
    summary = RunSummary(run_id=run_id, output=str(out), scenes_skipped=skipped,
                         crs=next(iter(writers.values())).crs.name)
    for s in opened:
        w = writers[targets[s.name]]
        if not w.crs.equals(s.crs.to_wkt() if hasattr(s.crs, "to_wkt") else s.crs, ignore_axis_order=True):
            summary.reprojected_scenes.append(s.name)
    if summary.reprojected_scenes:
        log.warning("%d scene(s) are in another CRS than the output (%s) and are reprojected into it: %s",
                    len(summary.reprojected_scenes), summary.crs, ", ".join(summary.reprojected_scenes))
    record = {
        "config": config.to_dict(), "stage": stage.name, "tile_size": size, "overlap": overlap,
        "result_key": key, "skipped": skipped,
        "scenes": [{"name": s.name, "path": str(s.path), "fingerprint": fingerprints[s.name],
                    "crs": s.crs_name, "stretch": s.stats.to_dict()} for s in opened],
    }
    status = "failed"
    executor = None
    try:
        for p, w in writers.items():
            if config.output.overwrite:
                for s in opened:
                    if targets[s.name] == p and states[p]["scenes"].get(s.name):
                        w.delete_scene_rows(s.name)
            if config.output.resume:
                w.mark_interrupted_runs(exclude_run_id=w.run_id)
            w.start_run(command or stage.name, record, models)
        plan = []
        for s in opened:
            tiles = list(grids[s.name])
            summary.tiles += len(tiles)
            if config.output.resume:
                done = writers[targets[s.name]].finished_tiles(s.name)
                mismatched = [t.id for t in tiles if t.id in done and done[t.id] != (
                    t.col_off, t.row_off, t.width, t.height)]
                if mismatched:
                    raise OutputError(
                        f"{targets[s.name]}: --resume found ledger rows for {s.name} made with another tile grid "
                        f"(tile {mismatched[0]}); use the same --tile/--overlap as before or a new output.")
                todo = [t for t in tiles if t.id not in done]
                summary.skipped_resume += len(tiles) - len(todo)
                tiles = todo
            plan.append((s, tiles))
        summary.scenes = len(opened)
        executor = _Executor(config.execution)
        status = _execute(plan, stage, config.execution, executor, writers, targets, summary, progress, cancel)
    except (KeyboardInterrupt, Cancelled):
        status = "cancelled"
        raise
    finally:
        summary.seconds = time.perf_counter() - t_start
        summary.status = status
        if executor is not None:
            executor.close()
        for w in writers.values():
            try:
                w.finish_run(status)
            finally:
                w.close()
    if status == "cancelled":
        raise Cancelled(f"cancelled: {summary.saved} of {summary.tiles} tiles saved in {out}", summary)
    return summary


def _execute(plan, stage: Stage, execution: ExecutionConfig, executor: _Executor, writers, targets,
             summary: RunSummary, progress: Progress, cancel: threading.Event | None) -> str:
    """Submit batches across scenes, write them as they complete; returns the run status."""
    threads = execution.threads_per_worker()
    remaining = {s.name: 0 for s, _ in plan}

    def tasks():
        for scene, tiles in plan:
            for b in iter_tile_batches(tiles, execution.batch_size):
                yield scene, b

    for scene, tiles in plan:
        remaining[scene.name] = -(-len(tiles) // execution.batch_size)
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
        fut = executor.submit(_run_batch, scene, tiles, inputs, stage, threads)
        fut.add_done_callback(lambda f, task=task: done_q.put((task, f)))
        in_flight += 1
        return True

    progress.start(sum(len(t) for _, t in plan), desc=", ".join(s.name for s, _ in plan)[:60])
    for scene, tiles in plan:
        if not tiles:
            _scene_finished(scene, writers[targets[scene.name]], stage)
    while in_flight < executor.slots and submit_next():
        pass
    error: BaseException | None = None
    while in_flight:
        try:
            (scene, tiles), fut = done_q.get(timeout=0.2)
        except queue.Empty:
            if not stopping and ((cancel is not None and cancel.is_set()) or getattr(progress, "cancelled", False)):
                stopping = True
                log.warning("cancelling: finishing the %d batch(es) in flight", in_flight)
            continue
        in_flight -= 1
        try:
            results = fut.result()
        except BaseException as exc:  # noqa: BLE001 - a GeorsError from a worker, or a crashed worker
            error = error or exc
            stopping = True
            continue
        writer = writers[targets[scene.name]]
        writer.write_results(results, model=_model_name(stage), crs=scene.crs)
        _tally(summary, results, scene)
        summary.megapixels += sum(float(t.core.width) * float(t.core.height) for t in tiles) / 1e6
        progress.advance(len(results), scene=scene.name, detections=summary.detections)
        faults.checkpoint("batch")
        remaining[scene.name] -= 1
        if remaining[scene.name] == 0:
            _scene_finished(scene, writer, stage)
        if not stopping and ((cancel is not None and cancel.is_set()) or getattr(progress, "cancelled", False)):
            stopping = True
        if not stopping:
            submit_next()
    progress.close()
    if error is not None:
        raise error
    return "cancelled" if stopping else "finished"


def _model_name(stage: Stage) -> str:
    info = stage.describe()
    return str(info.get("model") or next((v.get("model") for v in info.values() if isinstance(v, dict)
                                          and v.get("model")), ""))


def _tally(summary: RunSummary, results: list[TileResult], scene: Scene) -> None:
    for r in results:
        if r.status in ("done", "gated", "nodata", "failed"):
            setattr(summary, r.status, getattr(summary, r.status) + 1)
        summary.detections += len(r.detections)
        summary.instances += len(r.instances)
        summary.segments += len(r.segmentation)
        for d in r.detections:
            summary.per_class[d.class_name] = summary.per_class.get(d.class_name, 0) + 1
        for i in r.instances:
            summary.mask_methods[i.mask_method] = summary.mask_methods.get(i.mask_method, 0) + 1
            summary.fallbacks += i.mask_method.endswith(":fallback") or i.mask_method == "box:fallback"
        for k, v in r.stage_seconds.items():
            summary.stage_seconds[k] = summary.stage_seconds.get(k, 0.0) + v


def _scene_finished(scene: Scene, writer: GeoPackageWriter, stage: Stage) -> None:
    """Work that needs a scene's every tile: the dissolve of segmentation polygons across core boundaries."""
    if "segmentation" in stage.layers:
        from geors.merge import dissolve_scene

        dissolve_scene(writer, scene.name)
