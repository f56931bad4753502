"""``geors tiles SCENE -o OUT.gpkg``: the tile grid as layers to inspect in QGIS."""

from __future__ import annotations

import click

from geors.cli.options import bands_option, handle_errors, parse_bands, progress_option, tile_options
from geors.pipeline import write_tile_grid
from geors.progress import make_progress
from geors.raster import open_scene


@click.command("tiles")
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output GeoPackage.")
@tile_options
@bands_option
@click.option("--no-stats", is_flag=True, help="Skip reading pixels (no nodata fraction / brightness).")
@progress_option
@handle_errors
def command(scene, output, tile_size, overlap, bands, no_stats, progress):
    """Write tile footprints (layer 'tiles') and their cores (layer 'tile_cores')."""
    sc = open_scene(scene, bands=parse_bands(bands))
    counts = write_tile_grid(sc, output, tile_size, overlap, progress=make_progress(progress),
                             with_stats=not no_stats)
    click.echo(f"{output}: {counts['tiles']} tiles ({counts['nodata_tiles']} all-nodata) of {sc.name}", err=True)
