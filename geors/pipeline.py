"""The one place that orchestrates: scenes -> tiles -> stage -> GeoPackage.

A *stage* is any callable ``stage(scene, tiles, images) -> list[TileResult]``
over a batch of tiles (the pixels already read); it may carry a loaded model.
The pipeline reads pixels inside the worker that runs the stage (pixels never
travel between processes), skips all-nodata tiles, keeps a bounded number of
batches in flight (memory = in-flight tiles x tile size, never the scene
size), and writes each finished batch with its ledger rows in one transaction.

Execution is Dask: the threaded scheduler on one machine by default, or a
``dask.distributed`` cluster when ``scheduler`` is an address (``tcp://...``),
``"local"`` (a LocalCluster started here) or a ``distributed.Client``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from geors.errors import ConfigError, GeorsError, OutputError
from geors.progress import NullProgress, Progress
from geors.raster import Scene, TileImage, open_scene
from geors.results import TileResult
from geors.tiling import Tile, TileGrid, window_bounds
from geors.vector import GeoPackageWriter

log = logging.getLogger(__name__)

__all__ = ["Stage", "RunConfig", "RunSummary", "process_scenes", "write_tile_grid", "iter_tile_batches"]


class Stage(Protocol):
    """A batch function over tiles. ``layers`` names the output layers it fills."""

    name: str
    layers: tuple[str, ...]

    def __call__(self, scene: Scene, tiles: Sequence[Tile], images: Sequence[TileImage]) -> list[TileResult]:
        ...

    def describe(self) -> dict:
        ...


@dataclass
class RunConfig:
    """Options of a tiled run (recorded as JSON in ``geors_runs``).

    Attributes:
        tile_size: tile size D in pixels.
        overlap: overlap d in pixels.
        bands: 1-based band indexes or None for the default choice.
        batch_size: tiles per stage call.
        workers: threads (local) used to run batches concurrently.
        scheduler: None (local threads), ``"synchronous"``, ``"local"`` (start a
            LocalCluster), or a scheduler address ``tcp://host:port``.
        resume: skip tiles already in the output's ledger.
    """

    tile_size: int = 640
    overlap: int = 128
    bands: list[int] | None = None
    batch_size: int = 8
    workers: int = 2
    scheduler: str | None = None
    resume: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunSummary:
    run_id: str
    output: str
    scenes: int = 0
    tiles: int = 0
    processed: int = 0
    skipped_nodata: int = 0
    skipped_resume: int = 0
    gated: int = 0
    failed: int = 0
    detections: int = 0
    instances: int = 0
    segments: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _process_batch(scene: Scene, tiles: Sequence[Tile], stage: Stage) -> list[TileResult]:
    """Runs in a worker: read the tiles, skip nodata ones, call the stage on the rest."""
    t0 = time.perf_counter()
    images = [scene.read_tile(t) for t in tiles]
    results: dict[str, TileResult] = {}
    todo_t, todo_i = [], []
    for t, img in zip(tiles, images, strict=True):
        if not img.valid.any():
            results[t.id] = TileResult(scene.name, t.id, t.window, "nodata", seconds=0.0)
        else:
            todo_t.append(t)
            todo_i.append(img)
    if todo_t:
        try:
            for r in stage(scene, todo_t, todo_i):
                results[r.tile_id] = r
        except GeorsError:
            raise  # bad input (unreadable window, band mismatch...): stop with its message
        except Exception as exc:  # a model/engine failure: record it, let --resume retry these tiles
            log.exception("%s: tiles %s failed", scene.name, [t.id for t in todo_t])
            for t in todo_t:
                results[t.id] = TileResult(scene.name, t.id, t.window, "failed", message=repr(exc)[:500])
    elapsed = time.perf_counter() - t0
    out = [results[t.id] for t in tiles]
    for r in out:
        if not r.seconds:
            r.seconds = elapsed / len(tiles)
    return out


def iter_tile_batches(tiles: Sequence[Tile], batch_size: int) -> Iterable[list[Tile]]:
    for i in range(0, len(tiles), batch_size):
        yield list(tiles[i:i + batch_size])


def _executor(config: RunConfig):
    """Returns (submit_window, close): submit_window(list of (fn, args)) -> list of results in order."""
    sched = config.scheduler
    if sched in (None, "threads", "synchronous"):
        import dask

        kind = "synchronous" if (sched == "synchronous" or config.workers <= 1) else "threads"

        def run_window(calls):
            delayed = [dask.delayed(fn, pure=False)(*args) for fn, args in calls]
            return list(dask.compute(*delayed, scheduler=kind, num_workers=config.workers))

        return run_window, lambda: None
    from geors.errors import require

    distributed = require("distributed", "distributed", "Running on a Dask cluster")
    cluster = None
    # distributed installs its own INFO-level handlers; keep it as quiet as geors' own logs
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("geors").getEffectiveLevel()))
    if sched == "local":
        cluster = distributed.LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.WARNING)
        client = distributed.Client(cluster)
    elif isinstance(sched, str):
        try:
            client = distributed.Client(sched, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {sched}: {exc}. Is it running?") from None
    else:
        client = sched

    def run_window(calls):
        futures = [client.submit(fn, *args, pure=False) for fn, args in calls]
        return client.gather(futures)

    def close():
        if cluster is not None:
            client.close()
            cluster.close()

    return run_window, close


def process_scenes(
    scenes: Sequence[str | Scene],
    out: str | Path,
    stage: Stage,
    config: RunConfig | None = None,
    progress: Progress | None = None,
    command: str = "",
) -> RunSummary:
    """Run ``stage`` over every tile of every scene and write to ``out`` (GeoPackage).

    Memory is bounded by ``workers x batch_size`` tiles in flight. A batch's
    features and ledger rows are committed together, so an interrupted run
    leaves a consistent file that ``resume=True`` continues.
    """
    config = config or RunConfig()
    progress = progress or NullProgress()
    opened = [s if isinstance(s, Scene) else open_scene(s, bands=config.bands) for s in scenes]
    if not opened:
        raise ConfigError("no scene given")
    names = [s.name for s in opened]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"several scenes share the file name {sorted(dup)[0]!r}; outputs identify scenes by "
                          "file name, so rename them or run them into separate GeoPackages.")
    # Everything that can fail on bad input (models, bands) fails before the output is touched.
    model_info = stage.describe()
    check = getattr(stage, "check_scene", None)
    if check is not None:
        for sc in opened:
            check(sc)
    writer = GeoPackageWriter(out, opened[0].crs, layers=stage.layers)
    summary = RunSummary(run_id=writer.run_id, output=str(out))
    t_start = time.perf_counter()
    # The scene-wide stretch is estimated here, once, and travels with the pickled
    # Scene to workers (they never re-estimate it); it is recorded with the run.
    stretch = {s.name: s.stats.to_dict() for s in opened}
    writer.start_run(command or stage.name, {**config.to_dict(), "stage": stage.name,
                                              "scenes": [str(s.path) for s in opened], "stretch": stretch},
                     model_info)
    run_window, close = _executor(config)
    status = "failed"
    try:
        for scene in opened:
            summary.scenes += 1
            grid = TileGrid(scene, config.tile_size, config.overlap)
            tiles = list(grid)
            summary.tiles += len(tiles)
            if config.resume:
                done = writer.finished_tiles(scene.name)
                mismatched = [t.id for t in tiles if t.id in done and done[t.id] != (
                    t.col_off, t.row_off, t.width, t.height)]
                if mismatched:
                    raise OutputError(
                        f"{out}: --resume found ledger rows for {scene.name} made with another tile grid "
                        f"(tile {mismatched[0]}); use the same --tile/--overlap as before or a new output.")
                tiles = [t for t in tiles if t.id not in done]
                summary.skipped_resume += len(grid) - len(tiles)
            progress.start(len(tiles), desc=scene.name)
            batches = list(iter_tile_batches(tiles, config.batch_size))
            window = max(1, config.workers)
            for i in range(0, len(batches), window):
                if progress.cancelled:
                    raise KeyboardInterrupt("cancelled")
                calls = [(_process_batch, (scene, b, stage)) for b in batches[i:i + window]]
                for results in run_window(calls):
                    writer.write_results(results, model=model_info.get("model", ""))
                    for r in results:
                        summary.processed += r.status in ("done", "gated")
                        summary.skipped_nodata += r.status == "nodata"
                        summary.gated += r.status == "gated"
                        summary.failed += r.status == "failed"
                        summary.detections += len(r.detections)
                        summary.instances += len(r.instances)
                        summary.segments += len(r.segmentation)
                    progress.advance(len(results), detections=summary.detections)
            progress.close()
        status = "finished"
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    finally:
        summary.seconds = round(time.perf_counter() - t_start, 3)
        try:
            writer.finish_run(status)
        finally:
            writer.close()
            close()
    return summary


def tile_statistics(scene: Scene, tile: Tile) -> dict:
    """Nodata fraction and mean brightness (0..1, valid pixels) of one tile."""
    img = scene.read_tile(tile)
    valid = img.valid[: tile.height, : tile.width]
    n = int(valid.sum())
    mean = float(img.image[:, : tile.height, : tile.width][:, valid].mean()) if n else None
    return {"nodata_fraction": 1.0 - n / valid.size, "mean_brightness": mean}


def write_tile_grid(
    scene: Scene,
    out: str | Path,
    tile_size: int = 640,
    overlap: int = 128,
    progress: Progress | None = None,
    with_stats: bool = True,
    batch: int = 64,
    stats_fn: Callable[[Scene, Tile], dict] = tile_statistics,
) -> dict:
    """Write the tile grid as ``tiles`` (footprints + stats) and ``tile_cores`` layers.

    Returns counts: tiles, nodata tiles.
    """
    progress = progress or NullProgress()
    grid = TileGrid(scene, tile_size, overlap)
    writer = GeoPackageWriter(out, scene.crs, layers=("tiles", "tile_cores"))
    import shapely

    counts = {"tiles": len(grid), "nodata_tiles": 0, "run_id": writer.run_id}
    try:
        writer.start_run("tiles", {"scene": str(scene.path), "tile_size": tile_size, "overlap": overlap})
        progress.start(len(grid), desc=scene.name)
        tiles = list(grid)
        for b in iter_tile_batches(tiles, batch):
            rows, cores, geoms, core_geoms = [], [], [], []
            for t in b:
                base = {"scene": scene.name, "tile_id": t.id, "row": t.row, "col": t.col}
                st = stats_fn(scene, t) if with_stats else {"nodata_fraction": None, "mean_brightness": None}
                counts["nodata_tiles"] += st["nodata_fraction"] == 1.0
                rows.append({**base, "col_off": t.col_off, "row_off": t.row_off, "width": t.width,
                             "height": t.height, **st})
                geoms.append(shapely.box(*window_bounds(t.window, scene.transform)))
                c = t.core
                cores.append({**base, "col_off": int(c.col_off), "row_off": int(c.row_off),
                              "width": int(c.width), "height": int(c.height)})
                core_geoms.append(shapely.box(*window_bounds(c, scene.transform)))
            with writer.transaction():
                writer._insert("tiles", [{"run_id": writer.run_id, **r} for r in rows], geoms)
                writer._insert("tile_cores", [{"run_id": writer.run_id, **r} for r in cores], core_geoms)
            progress.advance(len(b))
        progress.close()
        writer.finish_run("finished")
    finally:
        writer.close()
    return counts
