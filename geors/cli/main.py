"""Entry point of the ``geors`` command. Each command lives in its own module."""

from __future__ import annotations

import logging

import click

from geors import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="geors")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def main(verbose: int, quiet: bool) -> None:
    """geors: detect and outline objects in very large georeferenced rasters.

    Exit codes: 0 ok, 1 failure while processing, 2 bad input or usage, 130 cancelled (Ctrl-C or SIGTERM:
    the batches in flight are saved; --resume continues).
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("geors").setLevel(level)
    configure_environment(level)


def configure_environment(level: int) -> None:
    """Process-wide settings that belong to the program, not the library (which sets none on import).

    - GDAL's block cache defaults to 5% of RAM and fills as a scene streams by, so
      memory would grow with the scene; ``RECOMMENDED_GDAL_CACHEMAX_MB`` (64 MB, why:
      ``geors.raster``) keeps memory flat.
    - OpenMP threads that wait for work sleep instead of spinning
      (``OMP_WAIT_POLICY=PASSIVE``, read when torch starts its thread pool, so
      set before torch is imported; inherited by LocalCluster workers). With
      spinning threads one busy core stalls every parallel region: measured on
      2 cores with one other CPU-bound process, a dense 4,000² ``geors run``
      took 75 s instead of 20 s; on the quiet machine passive waiting was as
      fast (14.3 s vs 17.6 s). ``benchmarks/bench_pipeline.py``, docs/scaling.md.
    - dask.distributed installs INFO-level handlers (and shutdown chatter); keep
      it as quiet as geors' own logs.

    A variable the user has set is left alone.
    """
    import os

    from geors.raster import RECOMMENDED_GDAL_CACHEMAX_MB

    os.environ.setdefault("GDAL_CACHEMAX", str(RECOMMENDED_GDAL_CACHEMAX_MB))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    name = logging.getLevelName(max(logging.WARNING, level)).lower()
    import sys

    if "distributed" not in sys.modules:  # distributed configures its loggers from dask's config on import
        import dask.config

        dask.config.set({"distributed.logging": {
            "distributed": name, "distributed.client": name, "distributed.nanny": "error",
            "distributed.core": name, "distributed.http.proxy": "error", "distributed.worker": name,
            "distributed.scheduler": name, "bokeh": "error", "tornado": "critical", "tornado.application": "error"}})
    for logger in ("distributed", "distributed.nanny", "distributed.worker", "distributed.scheduler"):
        logging.getLogger(logger).setLevel(max(logging.ERROR if logger == "distributed.nanny" else logging.WARNING,
                                               level))


def _register() -> None:
    # One line per command module; each module defines a click command or group.
    from geors.cli import info, sample, tiles

    for mod in (info, tiles, sample):
        main.add_command(mod.command)

    from geors.cli import detect as detect_cli  # gate + detector, and the full pipeline

    main.add_command(detect_cli.detect)
    main.add_command(detect_cli.run)

    from geors.cli import eval as eval_cli  # group; subcommands register with eval_cli.eval_group.add_command

    main.add_command(eval_cli.eval_group)

    from geors.cli import eval_masks, label, masks, models  # SAM masks, SAMRS labels, model files

    for mod in (masks, label, models):
        main.add_command(mod.command)

    from geors.cli import train  # R2-CNN gate + detector training

    main.add_command(train.command)

    from geors.cli import preview  # quick-look PNG of a scene and its layers

    main.add_command(preview.command)

    from geors.cli import segment as segment_cli  # C2FNet: segment, train segmenter, eval segmentation

    main.add_command(segment_cli.command)
    train.train_group.add_command(segment_cli.train_command)
    eval_cli.eval_group.add_command(segment_cli.eval_command)
    eval_cli.eval_group.add_command(eval_masks.command)


_register()


if __name__ == "__main__":
    main()
