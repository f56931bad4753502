"""``geors tiles SCENE -o OUT.gpkg``: the tile grid as layers to inspect in QGIS, through the pipeline."""

from __future__ import annotations

import click

from geors.cli.options import build_config, handle_errors, pipeline_options, run_pipeline_command
from geors.config import PipelineConfig


@click.command("tiles")
@click.argument("scenes", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="Output GeoPackage.")
@click.option("--no-stats", is_flag=True, help="Skip the nodata fraction and brightness statistics.")
@pipeline_options(models=False)
@handle_errors
def command(scenes, output, no_stats, **params):
    """Write tile footprints (layer 'tiles') and their cores (layer 'tile_cores')."""
    import geors.pipeline as pipeline
    from geors.progress import make_progress
    from geors.stages import TileInfoStage

    config = build_config(PipelineConfig(detect=None), params)
    progress = params["progress"]
    run_pipeline_command(
        lambda cancel: pipeline.process_scenes(list(scenes), output, TileInfoStage(with_stats=not no_stats), config,
                                               progress=make_progress(progress), cancel=cancel, command="tiles"),
        output, progress)
