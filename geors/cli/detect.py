"""``geors detect`` (gate + detector) and ``geors run`` (detector + masks) over scenes."""

from __future__ import annotations

import json

import click

from geors.cli.options import bands_option, handle_errors, parse_bands, progress_option
from geors.errors import ConfigError
from geors.pipeline import RunConfig, process_scenes
from geors.progress import make_progress
from geors.stages import DetectStage


def _detect_options(f):
    for opt in reversed([
        click.argument("scenes", nargs=-1, required=True, type=click.Path(dir_okay=False)),
        click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
                     help="GeoPackage to create or append to."),
        click.option("--model", default=None, help="Model name or file (default: the built-in tree model)."),
        click.option("--tile", "tile_size", type=int, default=None,
                     help="Tile size D in pixels (default: the model's)."),
        click.option("--overlap", type=int, default=None,
                     help="Overlap d in pixels, >= the largest object (default: the model's)."),
        bands_option,
        click.option("--gate-threshold", type=float, default=None,
                     help="Tiles with gate probability below P skip the detector (default: the model's)."),
        click.option("--no-gate", is_flag=True, help="Run the detector on every tile."),
        click.option("--score-threshold", type=float, default=0.3, show_default=True,
                     help="Minimum detection score written."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--batch-size", type=int, default=8, show_default=True, help="Tiles per model call."),
        click.option("--workers", type=int, default=1, show_default=True,
                     help="Batches run concurrently (threads), or cluster workers with --scheduler local."),
        click.option("--scheduler", default=None,
                     help="Dask: 'synchronous', 'local' (start a LocalCluster) or tcp://HOST:PORT."),
        click.option("--resume", is_flag=True, help="Skip tiles already in OUTPUT's ledger (geors_tiles)."),
        progress_option,
    ]):
        f = opt(f)
    return f


def _run(command, scenes, output, model, tile_size, overlap, bands, gate_threshold, no_gate, score_threshold,
         device, batch_size, workers, scheduler, resume, progress, sam=None):
    if no_gate and gate_threshold is not None:
        raise ConfigError("--gate-threshold and --no-gate exclude each other")
    if gate_threshold is not None and not 0 <= gate_threshold <= 1:
        raise ConfigError(f"--gate-threshold must be within [0, 1], got {gate_threshold}")
    stage = DetectStage(model, device=device, gate_threshold=gate_threshold, score_threshold=score_threshold,
                        mask_engine=sam, use_gate=not no_gate)
    det = stage.detector  # loads (and validates) the model before any output is touched
    config = RunConfig(tile_size=tile_size or det.tile_size, overlap=overlap if overlap is not None else det.overlap,
                       bands=parse_bands(bands), batch_size=batch_size, workers=workers, scheduler=scheduler,
                       resume=resume)
    summary = process_scenes(list(scenes), output, stage, config, progress=make_progress(progress),
                             command=command)
    click.echo(json.dumps(summary.to_dict()), err=progress != "jsonl")
    if summary.failed:
        click.echo(f"Error: {summary.failed} tile(s) failed (see the log and the 'message' field of "
                   f"geors_tiles in {output}); rerun the same command with --resume to retry only those.", err=True)
        raise SystemExit(1)


@click.command("detect")
@_detect_options
@handle_errors
def detect(**kw):
    """Gate every tile, detect objects on tiles that pass; write the 'detections' layer."""
    _run("detect", **kw)


@click.command("run")
@_detect_options
@click.option("--sam", default="auto", show_default=True,
              help="Box->mask engine: vit_b|vit_l|vit_h|vit_t|CHECKPOINT.pth|grabcut|box|auto "
                   "(auto = SAM vit_b when its checkpoint is found, else grabcut).")
@handle_errors
def run(sam, **kw):
    """The full pipeline: gate -> detect -> masks; writes 'detections' and 'instances'."""
    _run("run", sam=sam, **kw)
