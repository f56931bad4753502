"""Archive batch run: a folder of GeoTIFFs in several CRSs -> one GeoPackage, with ``geors.run``.

    python examples/archive_batch_run.py ARCHIVE_DIR -o archive.gpkg [--crs EPSG:32617] [--workers 2]
    python examples/archive_batch_run.py --demo /tmp/archive -o /tmp/archive.gpkg   # tiny generated archive

The same run from the shell:

    geors run ARCHIVE_DIR -o archive.gpkg --sam watershed --workers 2

Scenes in another CRS than the output (the first scene's, or ``--crs``) are
reprojected into it; ``area_m2`` is computed before reprojection. A scene that
cannot be opened is reported and skipped. Run it again with ``--resume`` to
continue an interrupted run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import geors  # noqa: E402
from geors.raster import RECOMMENDED_GDAL_CACHEMAX_MB  # noqa: E402

# what the geors CLI sets (before the first read): memory stays flat while streaming
os.environ.setdefault("GDAL_CACHEMAX", str(RECOMMENDED_GDAL_CACHEMAX_MB))
from geors import DetectConfig, ExecutionConfig, MaskConfig, OutputConfig, PipelineConfig, TilingConfig  # noqa: E402


def batch_run(archive: str | Path, out: str | Path, *, crs: str | None = None, workers: int = 1,
              mask_engine: str = "watershed", model: str | None = None, score_threshold: float | None = None,
              tile: int | None = None, overlap: int | None = None, resume: bool = False) -> geors.RunSummary:
    """Detect and outline objects in every raster under ``archive``; write one GeoPackage ``out``."""
    config = PipelineConfig(
        tiling=TilingConfig(tile_size=tile, overlap=overlap),
        detect=DetectConfig(model=model, score_threshold=score_threshold),  # None = the built-in tree model
        masks=MaskConfig(engine=mask_engine),
        execution=ExecutionConfig(workers=workers),
        output=OutputConfig(crs=crs, resume=resume),
    )
    return geors.run([str(archive)], out, config)  # a folder is searched recursively for rasters


def per_scene_counts(gpkg: str | Path) -> dict[str, int]:
    """Detections per scene in the output, read back with pyogrio (as any GIS would)."""
    import pyogrio

    frame = pyogrio.read_dataframe(gpkg, layer="detections", columns=["scene"], read_geometry=False)
    return {str(k): int(v) for k, v in frame["scene"].value_counts().sort_index().items()}


def main(argv: list[str] | None = None) -> geors.RunSummary:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", nargs="?", help="folder (searched recursively), glob or @list.txt")
    p.add_argument("-o", "--out", required=True, help="output GeoPackage")
    p.add_argument("--demo", metavar="DIR", help="write a tiny archive (two CRSs) into DIR and run on it")
    p.add_argument("--scenes", type=int, default=2, help="--demo: number of scenes")
    p.add_argument("--size", type=int, default=256, help="--demo: scene side, pixels")
    p.add_argument("--crs", help="CRS of the output, e.g. EPSG:32617 (default: the first scene's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--sam", default="watershed", help="mask engine: watershed, grabcut, box, auto, vit_b, ...")
    p.add_argument("--model", help="detector name or .safetensors file (default: r2cnn-neon-trees)")
    p.add_argument("--score-threshold", type=float, default=None, help="default: the model's")
    p.add_argument("--tile", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    archive = a.archive
    if a.demo:
        from demo_data import write_archive

        write_archive(Path(a.demo), a.scenes, a.size)
        archive = a.demo
    if not archive:
        p.error("give ARCHIVE_DIR or --demo DIR")
    try:
        summary = batch_run(archive, a.out, crs=a.crs, workers=a.workers, mask_engine=a.sam, model=a.model,
                            score_threshold=a.score_threshold, tile=a.tile, overlap=a.overlap, resume=a.resume)
    except geors.GeorsError as exc:  # bad input: one message that names the file or option and the fix
        sys.exit(f"Error: {exc}")
    print("\n".join(summary.lines()))  # the lines name the scenes reprojected into the output's CRS
    print("detections per scene:", per_scene_counts(a.out) if summary.detections else {})
    return summary


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo_data beside this file
    main()
