"""``geors detect`` (gate + detector) and ``geors run`` (detector + masks, optionally segmentation)."""

from __future__ import annotations

import click

from geors.cli.options import build_config, handle_errors, pipeline_options, run_pipeline_command
from geors.config import DetectConfig, MaskConfig, PipelineConfig, SegmentConfig


def detect_options(f):
    for opt in reversed([
        click.argument("scenes", nargs=-1, required=True),
        click.option("-o", "--output", required=True, type=click.Path(),
                     help="GeoPackage to create or append to (a folder with --per-scene)."),
        click.option("--model", default=None, help="Model name or file (default: the built-in tree model)."),
        click.option("--gate-threshold", type=float, default=None,
                     help="Tiles with gate probability below P skip the detector (default: the model's)."),
        click.option("--no-gate", is_flag=True, help="Run the detector on every tile."),
        click.option("--score-threshold", type=float, default=None,
                     help="Detections scoring at least this pass (are outlined, counted, shown) [default: the "
                          "model's threshold, calibrated for the best F1 on its validation tiles, else 0.3]."),
        click.option("--min-score", type=float, default=None,
                     help="Also write detections scoring down to S, with passes_threshold = 0 (no outline, greyed "
                          "in QGIS): `geors eval detections` then computes AP over every score, not only those "
                          "above the threshold. E.g. 0.05 [default: write only detections that pass]."),
    ]):
        f = opt(f)
    return pipeline_options()(f)


def _run(command: str, base: PipelineConfig, scenes, output, progress, optional=(), **params):
    import geors.pipeline as pipeline
    from geors.progress import make_progress

    config = build_config(base, dict(params, progress=progress), optional=optional)

    def work(cancel):
        from geors.summary import empty_detections_hint

        summary = pipeline.run(list(scenes), output, config, progress=make_progress(progress), cancel=cancel,
                               command=command)
        hint = empty_detections_hint(summary, config.detect.score_threshold if config.detect else None)
        if hint:
            summary.hints.append(hint)
        return summary

    return run_pipeline_command(work, output, progress)


@click.command("detect")
@detect_options
@handle_errors
def detect(scenes, output, progress, **params):
    """Gate every tile, detect objects on tiles that pass; write the 'detections' layer.

    SCENES: raster files, folders (searched for rasters), quoted globs ('archive/*.tif'), VRT mosaics or
    text files listing paths (@list.txt).
    """
    _run("detect", PipelineConfig(detect=DetectConfig()), scenes, output, progress, **params)


@click.command("run")
@detect_options
@click.option("--sam", default=None,
              help="Box->mask engine: vit_b|vit_l|vit_h|vit_t|CHECKPOINT.pth|watershed|grabcut|box|auto "
                   "[default: auto = SAM vit_b when its checkpoint is found, else the weight-free engine].")
@click.option("--simplify", type=float, default=None, help="Polygon simplification, pixels [default: 0.5].")
@click.option("--segmenter", default=None,
              help="Also segment the scene with this C2FNet model (name or file) in the same pass.")
@click.option("--raster-out", type=click.Path(dir_okay=False), default=None,
              help="With --segmenter: also write the classes as a GeoTIFF here.")
@handle_errors
def run(scenes, output, progress, segmenter, raster_out, **params):
    """The full pipeline: gate -> detect -> masks (-> segmentation); writes 'detections' and 'instances'.

    SCENES: raster files, folders (searched for rasters), quoted globs ('archive/*.tif'), VRT mosaics or
    text files listing paths (@list.txt).
    """
    seg = SegmentConfig(segmenter=segmenter, raster_out=raster_out) if segmenter else None
    if raster_out and not segmenter:
        from geors.errors import ConfigError

        raise ConfigError("--raster-out needs --segmenter (the classes come from a segmentation model)")
    _run("run", PipelineConfig(detect=DetectConfig(), masks=MaskConfig(), segment=seg), scenes, output, progress,
         optional=("segment",), **params)
