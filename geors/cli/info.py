"""``geors info SCENE``: what a scene is and what processing it would cost."""

from __future__ import annotations

import json

import click

from geors.cli.options import bands_option, handle_errors, parse_bands, tile_options
from geors.raster import open_scene
from geors.tiling import TileGrid


@click.command("info")
@click.argument("scene", type=click.Path(dir_okay=False))
@tile_options
@bands_option
@click.option("--batch-size", type=int, default=2, show_default=True, help="For the memory estimate.")
@click.option("--workers", type=int, default=1, show_default=True, help="For the memory estimate.")
@click.option("--stats", is_flag=True, help="Also estimate the scene-wide stretch (reads a sample).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@handle_errors
def command(scene, tile_size, overlap, bands, batch_size, workers, stats, as_json):
    """Size, bands, dtype, CRS, pixel size, nodata, tile count and a memory estimate."""
    sc = open_scene(scene, bands=list(parse_bands(bands)) if bands else None)
    tile_size = tile_size or 640
    overlap = overlap if overlap is not None else 128
    grid = TileGrid(sc, tile_size, overlap)
    info = sc.describe()
    from geors.execution import estimate_peak_memory

    est = estimate_peak_memory(tile_size, batch_size, workers)
    mem = est["total_bytes"]
    tiles_in_flight = est["tiles_in_flight"]
    info.update({
        "tile_size": tile_size, "overlap": overlap, "tiles": len(grid), "grid_shape": list(grid.shape),
        "memory_estimate_bytes": mem, "tiles_in_flight": tiles_in_flight,
        "scene_bytes": sc.width * sc.height * len(sc.band_indexes) * _itemsize(sc.dtype),
    })
    if stats:
        info["stretch"] = sc.stats.to_dict()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"scene        {info['path']}")
    click.echo(f"size         {sc.width} x {sc.height} px, {sc.count} band(s), using {list(sc.band_indexes)} "
               f"({', '.join(sc.colorinterp)})")
    click.echo(f"dtype        {sc.dtype}   nodata {sc.nodata}")
    click.echo(f"crs          {info['crs']}")
    click.echo(f"pixel size   {sc.res[0]:g} x {sc.res[1]:g} CRS units" +
               (f" (~{info['gsd_m']:.3g} m)" if info["gsd_m"] else ""))
    click.echo(f"bounds       {', '.join(f'{v:.3f}' for v in info['bounds'])}")
    click.echo(f"overviews    {info['overviews'] or 'none'}   block {info['block_shape']}")
    click.echo(f"tiles        {len(grid)} ({grid.shape[0]} rows x {grid.shape[1]} cols) of {tile_size} px, "
               f"overlap {overlap} px")
    click.echo(f"memory       ~{mem / 2**20:.0f} MiB peak for a CPU run: ~{est['process_bytes'] / 2**20:.0f} MiB "
               f"process (Python, torch, GDAL, model) + ~{est['tiles_bytes'] / 2**20:.0f} MiB for "
               f"{tiles_in_flight} tiles in flight; the same for any scene size (this one: "
               f"{info['scene_bytes'] / 2**20:.0f} MiB of pixels, never loaded whole)")
    if stats:
        st = sc.stats
        click.echo(f"stretch      low {st.low} high {st.high} from {st.source}")


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize
