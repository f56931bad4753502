"""Where batches run (futures: here, in a thread pool, or on a Dask cluster) and what they cost in memory."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging

from geors.config import ExecutionConfig, PipelineConfig
from geors.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Executor", "configure_threads", "estimate_peak_memory", "check_memory", "check_tile_count",
           "with_batch_size", "PROCESS_BASE_BYTES", "BYTES_PER_TILE_PIXEL", "BYTES_PER_PLANNED_TILE"]


_THREADS: dict[str, int] = {}


def configure_threads(n: int) -> None:
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


class Executor:
    """Futures for batches: synchronous here, a thread pool here, or a Dask distributed cluster."""

    def __init__(self, execution: ExecutionConfig):
        self.cluster = None
        self.client = None
        self.own_client = False
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
                # Ctrl-C in a terminal goes to the whole process group: the worker processes would die with the
                # batches in flight and the run wait for them forever. They start with SIGINT ignored (so do
                # the processes their nannies start), so only this process hears it, stops submitting and lets
                # the batches in flight finish, as with the other executors.
                with _sigint_ignored_by_children():
                    self.cluster = distributed.LocalCluster(n_workers=execution.workers, threads_per_worker=1,
                                                            processes=True, dashboard_address=None,
                                                            silence_logs=logging.ERROR)
                    self.client = distributed.Client(self.cluster)
            elif isinstance(sched, str):
                _probe_scheduler(sched)
                try:
                    self.client = distributed.Client(sched, timeout="20s")
                    self.own_client = True
                except OSError as exc:
                    raise ConfigError(f"cannot reach the Dask scheduler at {sched}: {exc}. Is it running?") from None
            else:
                self.client = sched
        self.slots = 1 if self.kind == "synchronous" else 2 * max(1, execution.workers)

    def workers_alive(self) -> int | None:
        """Workers the cluster has now (None: not a cluster, or it cannot be asked)."""
        if self.client is None:
            return None
        try:
            return len(self.client.nthreads())
        except Exception:  # noqa: BLE001 - a scheduler that is gone has no workers
            return 0

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
        """Stop what this executor started: its thread pool, its client (never one the caller passed), its cluster."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.client is not None and (self.cluster is not None or self.own_client):
            self.client.close()
        if self.cluster is not None:
            self.cluster.close(timeout=30)


@contextlib.contextmanager
def _sigint_ignored_by_children():
    """SIGINT ignored while worker processes start: an ignored signal stays ignored across exec, and Python
    (and asyncio in the Dask worker) leave SIGINT alone when the parent ignored it. A blocked signal mask
    alone would not do: the processes are started with the mask reset.

    This process must still hear a Ctrl-C of these seconds (it was lost: the run finished with exit 0).
    SIGINT is also blocked in this thread (and so in the threads the cluster starts, which inherit the
    mask): Linux keeps a blocked signal pending even while it is ignored, and once the handler is back
    and the mask lifted, the pending Ctrl-C reaches it. Limit: a thread that existed before the window and
    leaves SIGINT unblocked (an OpenMP pool started by an earlier step, say) can still be handed the signal by
    the kernel and drop it; the cluster's own threads, started in the window, inherit the block.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocking = hasattr(signal, "pthread_sigmask")
    if blocking:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    # setting SIG_IGN discards a pending SIGINT: one that came between the block and here is remembered
    early = blocking and signal.SIGINT in signal.sigpending()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if blocking:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if early:
            signal.raise_signal(signal.SIGINT)


def _probe_scheduler(address: str, timeout_s: float = 5.0) -> None:
    """Refuse at once a ``tcp://HOST:PORT`` where nothing listens (the Dask client would retry for 20 s)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--scheduler {address}: the port is not a number; give tcp://HOST:PORT") from None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or not port:
        return  # other transports: the client says what is wrong
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"--scheduler {address}: cannot reach a Dask scheduler there ({exc.strerror or exc}). "
                          "Start it first (dask scheduler), or leave --scheduler out to run here.") from None


def with_batch_size(config: PipelineConfig) -> PipelineConfig:
    """The configuration with the batch size decided (the device is known once the models are loaded)."""
    import sys

    if config.execution.batch_size is not None:
        return config
    torch = sys.modules.get("torch")
    on_gpu = (config.execution.device != "cpu" and torch is not None and torch.cuda.is_available())
    return config.replace(execution__batch_size=config.execution.resolved_batch_size(on_gpu))


# Measured with `geors run --sam box --workers 1 --batch-size B` on a dense 2,000² NEON scene (default model,
# CPU, PyPI torch; /usr/bin/time -v): peak RSS 872 / 909 / 1,021 / 1,252 MiB at batch 1 / 2 / 4 / 8 of 640 px
# tiles -> ~54 MiB per tile in flight (~140 bytes per tile pixel: float32 pixels and the model's activations)
# on top of ~820 MiB for the process itself (Python, torch ~500 MiB, GDAL and its 64 MB block cache, the model).
PROCESS_BASE_BYTES = 820 * 2**20
BYTES_PER_TILE_PIXEL = 140


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


def check_memory(tile_size: int, execution: ExecutionConfig) -> None:
    import psutil

    est = estimate_peak_memory(tile_size, execution.batch_size, execution.workers,
                               processes=execution.scheduler == "local")
    avail = psutil.virtual_memory().available
    if est["tiles_bytes"] > 0.8 * avail:
        raise ConfigError(
            f"--tile {tile_size} with --batch-size {execution.batch_size} and --workers {execution.workers} "
            f"needs about {est['tiles_bytes'] / 2**30:.1f} GiB of memory for the tiles in flight, more than the "
            f"{avail / 2**30:.1f} GiB available. Use a smaller --tile, --batch-size or --workers.")


# A run plans every tile of its scenes before it starts (the ledger decides which are done): measured 640 bytes
# per Tile object (tracemalloc, 10,816 tiles of a 20,000² scene); the bookkeeping of a tile's ledger row and
# status about doubles it.
BYTES_PER_PLANNED_TILE = 1280


def check_tile_count(counts: dict[str, int], tile_size: int) -> None:
    """Refuse, before the output exists, a run whose tile plan alone would not fit in memory (a VRT of
    2e9 x 2e9 px is 1.5e13 tiles of 512 px: the plan died with a MemoryError after the output was created)."""
    import psutil

    total = sum(counts.values())
    need = total * BYTES_PER_PLANNED_TILE
    avail = psutil.virtual_memory().available
    if need > 0.5 * avail:
        name, n = max(counts.items(), key=lambda kv: kv[1])
        raise ConfigError(
            f"{name}: {n:,} tiles of {tile_size} px; planning {total:,} tiles needs about {need / 2**30:,.1f} GiB, "
            f"more than half the {avail / 2**30:.1f} GiB available. Split the scene (e.g. VRTs of parts of it) "
            "or use a larger --tile.")
