"""``geors masks``: boxes from any vector file -> instance masks in a GeoPackage."""

from __future__ import annotations

import json

import click

from geors.cli.options import bands_option, handle_errors, parse_bands, tile_options


def sam_option(f):
    return click.option(
        "--sam", "sam", default="auto", show_default=True,
        help="Mask engine: vit_b|vit_l|vit_h|vit_t (SAM; checkpoint from $GEORS_SAM_CHECKPOINT or the cache), "
             "a SAM checkpoint PATH, grabcut, box, or auto (SAM vit_b if a checkpoint is found, else grabcut).",
    )(f)


def device_option(f):
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                        show_default=True, help="Device for SAM.")(f)


@click.command("masks")
@click.argument("scene", type=click.Path(dir_okay=False))
@click.option("--boxes", required=True, type=click.Path(),
              help="Boxes or polygons: any OGR vector file, any CRS (reprojected); rotated boxes become "
                   "their circumscribed horizontal box.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output GeoPackage.")
@click.option("--class-field", default=None, help="Class attribute of BOXES (default: 'class' or 'label').")
@click.option("--layer", default=None, help="Layer of BOXES (default: the first).")
@sam_option
@device_option
@click.option("--simplify", type=float, default=0.5, show_default=True, help="Simplification tolerance, pixels.")
@click.option("--all-parts", is_flag=True, help="Keep every part of a mask (MultiPolygon), not only the largest.")
@bands_option
@tile_options
@handle_errors
def command(scene, boxes, output, class_field, layer, sam, device, simplify, all_parts, bands, tile_size, overlap):
    """Outline the objects in BOXES on SCENE; write the `instances` layer of OUTPUT.

    Each tile is read once; all of its boxes share one SAM image embedding.
    Prints a JSON summary.
    """
    from geors.masks import write_instance_masks
    from geors.raster import open_scene
    from geors.tiling import TileGrid

    sc = open_scene(scene, bands=parse_bands(bands))
    summary = write_instance_masks(
        sc, boxes, output, engine=sam, class_field=class_field, grid=TileGrid(sc, tile_size, overlap),
        device=device, layer=layer, simplify_px=simplify, multipart="all" if all_parts else "largest",
    )
    click.echo(json.dumps(summary, indent=2))
