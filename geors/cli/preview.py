"""``geors preview SCENE [OUT.gpkg] -o preview.png``: a quick look at a scene and its geors layers."""

from __future__ import annotations

import click

from geors.cli.options import handle_errors


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        vals = [float(v) for v in value.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise click.BadParameter("give minx,miny,maxx,maxy in the scene CRS, e.g. 404220,3285110,404240,3285130")
    return vals


def _bands(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("give 1-based band indexes, e.g. 4,3,2") from None


@click.command("preview")
@click.argument("scene", type=click.Path(dir_okay=False))
@click.argument("gpkg", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--layer", "layers", multiple=True,
              help="Layer of GPKG to draw (repeat; bottom first). Default: segmentation, instances, detections.")
@click.option("--bbox", callback=_floats, default=None, help="minx,miny,maxx,maxy in the scene CRS: show only this.")
@click.option("--max-size", type=click.IntRange(64, 16384), default=2048, show_default=True,
              help="Longer side of the picture in pixels; the scene is read decimated (from overviews).")
@click.option("--bands", callback=_bands, default=None, help="Bands shown as RGB, e.g. 4,3,2 (default as geors reads).")
@click.option("--title", default=None, help="Footer text (default: scene, CRS, resolution).")
@handle_errors
def command(scene, gpkg, output, layers, bbox, max_size, bands, title):
    """Draw SCENE with the layers of GPKG over it in class colours, with legend, scale bar and north arrow.

    Detections are outlined, instances filled semi-transparent, segmentation filled by class. Memory is
    bounded by --max-size, not by the scene.
    """
    from geors.cli.options import print_json
    from geors.paths import check_outputs_not_inputs
    from geors.preview import render_preview

    check_outputs_not_inputs({"-o": output}, {"SCENE": scene, "GPKG": gpkg})

    res = render_preview(scene, gpkg, output, layers=list(layers) or None, bbox=bbox, max_size=max_size,
                         bands=bands, title=title)
    print_json(res.to_dict())
