"""``geors label``: SAMRS recipe, boxes -> semantic label raster aligned with the scene."""

from __future__ import annotations

import json

import click

from geors.cli.masks import device_option, sam_option
from geors.cli.options import bands_option, handle_errors, parse_bands, tile_options


@click.command("label")
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("--boxes", required=True, type=click.Path(),
              help="Boxes or polygons: any OGR vector file, any CRS (reprojected).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Label GeoTIFF (uint8).")
@click.option("--class-field", default=None, help="Class attribute of BOXES.")
@click.option("--class-map", type=click.Path(dir_okay=False), default=None,
              help="JSON {\"name\": id} or CSV name,id file (ids 0..254).")
@click.option("--instances", "instances", type=click.Path(dir_okay=False), default=None,
              help="Also write a uint32 instance-id GeoTIFF here (0 = none).")
@click.option("--order", type=click.Choice(["larger_first", "smaller_first", "input"]), default="larger_first",
              show_default=True, help="Paint order of overlapping instances; later ones overwrite.")
@click.option("--layer", default=None, help="Layer of BOXES (default: the first).")
@sam_option
@device_option
@bands_option
@tile_options
@handle_errors
def command(scene, boxes, output, class_field, class_map, instances, order, layer, sam, device, bands,
            tile_size, overlap):
    """Write a label raster for SCENE from BOXES: same grid and CRS, 255 = unlabelled.

    Boxes become masks with the chosen engine; masks are painted with their
    class id (larger first by default, so small objects stay visible).
    Prints a JSON summary.
    """
    from geors.label import write_label_raster
    from geors.raster import open_scene
    from geors.tiling import TileGrid

    sc = open_scene(scene, bands=parse_bands(bands))
    report = write_label_raster(
        sc, boxes, output, class_field=class_field, class_map=class_map, engine=sam,
        instance_raster=instances, order=order, grid=TileGrid(sc, tile_size, overlap), device=device, layer=layer,
    )
    click.echo(json.dumps(report.to_dict(), indent=2))
