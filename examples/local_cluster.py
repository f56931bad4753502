"""Run geors on a Dask cluster: a LocalCluster started here, or a scheduler that is already running.

    python examples/local_cluster.py SCENES... -o OUT.gpkg --workers 2                  # geors starts a LocalCluster
    python examples/local_cluster.py SCENES... -o OUT.gpkg --scheduler tcp://HOST:8786   # an existing scheduler
    python examples/local_cluster.py SCENES... -o OUT.gpkg --own-cluster --workers 2     # start one here, pass its address
    python examples/local_cluster.py --demo /tmp/cluster -o /tmp/cluster.gpkg --workers 2

The same from the shell: ``geors run SCENES -o OUT.gpkg --scheduler local --workers 2`` or
``--scheduler tcp://HOST:8786``. Needs ``pip install distributed``.

How it runs: the main process opens and checks every scene, then submits
batches of tiles as futures (at most 2 x workers in flight, across scene
boundaries) and writes each finished batch into the GeoPackage. Workers read
their tiles directly from the files, so every worker must see the scene paths
(a shared disk or object storage for a remote cluster). Models load once per
worker process. With ``--device cuda`` each worker uses the GPU; start one
worker per GPU (``dask worker tcp://HOST:8786 --nthreads 1`` with
``CUDA_VISIBLE_DEVICES`` set per worker).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import geors  # noqa: E402
from geors.raster import RECOMMENDED_GDAL_CACHEMAX_MB  # noqa: E402

os.environ.setdefault("GDAL_CACHEMAX", str(RECOMMENDED_GDAL_CACHEMAX_MB))  # what the geors CLI sets
from geors import DetectConfig, ExecutionConfig, MaskConfig, PipelineConfig, TilingConfig  # noqa: E402


def run_on_cluster(scenes: list[str], out: str | Path, *, scheduler: str = "local", workers: int = 2,
                   threads: int | None = None, device: str = "auto", batch_size: int | None = None,
                   mask_engine: str = "watershed", tile: int | None = None, overlap: int | None = None
                   ) -> geors.RunSummary:
    """``geors.run`` with the work on a Dask cluster (``scheduler``: ``local`` or ``tcp://host:port``)."""
    config = PipelineConfig(
        tiling=TilingConfig(tile_size=tile, overlap=overlap),
        detect=DetectConfig(),
        masks=MaskConfig(engine=mask_engine),
        execution=ExecutionConfig(scheduler=scheduler, workers=workers, threads=threads, device=device,
                                  batch_size=batch_size),
    )
    return geors.run(scenes, out, config)


def main(argv: list[str] | None = None) -> geors.RunSummary:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenes", nargs="*", help="files, folders, globs or @list.txt")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--scheduler", default="local", help="local (start a LocalCluster) or tcp://HOST:PORT")
    p.add_argument("--own-cluster", action="store_true",
                   help="start a LocalCluster in this script and give geors its address (as for a remote one)")
    p.add_argument("--no-processes", action="store_true",
                   help="--own-cluster: workers as threads of this process (quick start, for trying it out)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch/OpenCV threads per worker (default: cores / workers)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, help="tiles per model call (default: 2 on CPU, 8 on a GPU)")
    p.add_argument("--sam", default="watershed")
    p.add_argument("--tile", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--demo", metavar="DIR", help="write a tiny archive into DIR and run on it")
    p.add_argument("--size", type=int, default=256, help="--demo: scene side, pixels")
    a = p.parse_args(argv)
    scenes = list(a.scenes)
    if a.demo:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from demo_data import write_archive

        scenes = [str(s) for s in write_archive(Path(a.demo), 2, a.size)]
    if not scenes:
        p.error("give SCENES or --demo DIR")
    cluster = client = None
    scheduler = a.scheduler
    if a.own_cluster:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=not a.no_processes,
                               protocol="tcp://", dashboard_address=None)
        client = Client(cluster)  # keeps the cluster up while geors connects to it by address
        scheduler = cluster.scheduler_address
        print(f"LocalCluster at {scheduler} with {a.workers} worker(s)", file=sys.stderr)
    try:
        summary = run_on_cluster(scenes, a.out, scheduler=scheduler, workers=a.workers, threads=a.threads,
                                 device=a.device, batch_size=a.batch_size, mask_engine=a.sam, tile=a.tile,
                                 overlap=a.overlap)
    except geors.GeorsError as exc:
        sys.exit(f"Error: {exc}")
    finally:
        if client is not None:
            from distributed import default_client

            try:  # geors 0.1 leaves the client it connected to an address open: close it before the cluster
                other = default_client()
                if other is not client:
                    other.close()
            except ValueError:
                pass
            client.close()
            cluster.close()
    print("\n".join(summary.lines()))
    return summary


if __name__ == "__main__":
    main()
