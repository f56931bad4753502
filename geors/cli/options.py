"""Options shared by the commands, the error -> exit-code wrapper, and the one way a command runs the pipeline.

Every command that reads pixels builds a :class:`geors.config.PipelineConfig`
(from ``--config run.toml``, overridden by options given on the command line)
and calls :func:`run_pipeline_command`, which handles Ctrl-C/SIGTERM (finish
the batches in flight, then say how many tiles are saved and the command that
continues), prints the summary (people: stderr; programs: one JSON object on
stdout) and sets the exit code: 0 ok, 1 tiles or scenes failed, 2 bad input,
130 cancelled.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shlex
import signal
import sys
import threading

import click

from geors.config import PipelineConfig
from geors.errors import Cancelled, ConfigError, GeorsError

log = logging.getLogger("geors.cli")


def tile_options(f):
    """``--tile`` and ``--overlap``: the one declaration of both (pipeline commands, ``info``, ``train``)."""
    f = click.option("--overlap", type=int, default=None,
                     help="Overlap d between neighbouring tiles, pixels, >= the largest object "
                          "(default: the model's, else 128).")(f)
    f = click.option("--tile", "tile_size", type=int, default=None,
                     help="Tile size D, pixels (default: the model's, else 640; 1024 for box masks).")(f)
    return f


def bands_option(f):
    return click.option("--bands", type=str, default=None,
                        help="Comma-separated 1-based band indexes, e.g. 4,3,2. "
                             "Default: red/green/blue colour interpretation, else the first three.")(f)


def progress_option(f):
    return click.option("--progress", type=click.Choice(["auto", "bar", "jsonl", "none"]), default="auto",
                        show_default=True,
                        help="Progress: bar on a terminal; jsonl = one JSON object per line on stdout "
                             "(the summary is the last line).")(f)


def parse_bands(value: str | None) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"--bands must be comma-separated integers, e.g. 4,3,2; got {value!r}") from None


def config_options(f):
    """``--config`` and ``--save-config`` of the pixel-reading commands."""
    for opt in reversed([
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="Read options from a TOML file (see --save-config); options given here win."),
        click.option("--save-config", type=click.Path(dir_okay=False), default=None,
                     help="Write the effective configuration as TOML to this file and continue."),
    ]):
        f = opt(f)
    return f


def model_execution_options(f):
    """Where and how a model runs: device, batch, workers, scheduler, threads (commands that run a model)."""
    for opt in reversed([
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--batch-size", type=int, default=None,
                     help="Tiles per model call [default: 2 on CPU, 8 on a GPU]."),
        click.option("--workers", type=int, default=1, show_default=True,
                     help="Batches run at once: threads, or LocalCluster processes with --scheduler local."),
        click.option("--scheduler", default=None,
                     help="Dask: 'synchronous', 'local' (start a LocalCluster) or tcp://HOST:PORT."),
        click.option("--threads", type=int, default=None,
                     help="torch/OpenCV threads per worker (default: CPU cores / workers, which avoids "
                          "oversubscription)."),
    ]):
        f = opt(f)
    return f


def output_options(f, several_scenes: bool = True):
    """What happens to OUTPUT: resume/overwrite, CRS; with several scenes also --strict and --per-scene."""
    opts = [
        click.option("--resume", is_flag=True,
                     help="Continue a run: skip tiles already in OUTPUT's ledger (same scenes and options)."),
        click.option("--overwrite", is_flag=True, help="Replace the results these scenes already have in OUTPUT."),
    ]
    if several_scenes:
        opts.append(click.option("--strict", is_flag=True,
                                 help="Stop (exit 2) when a scene cannot be opened instead of skipping it."))
    opts.append(click.option("--crs", default=None,
                             help="CRS of a new output (e.g. EPSG:32617). Default: the first scene's; scenes in "
                                  "other CRSs are reprojected."))
    if several_scenes:
        opts.append(click.option("--per-scene", is_flag=True, help="One GeoPackage per scene; OUTPUT is a folder."))
    for opt in reversed(opts):
        f = opt(f)
    return f


def pipeline_options(models: bool = True, several_scenes: bool = True):
    """The options of a pixel-reading command, each one only where it acts: tiling, bands, output handling,
    progress, config; ``models``: also device/batch/workers/scheduler/threads (``geors tiles`` runs no model);
    ``several_scenes``: also --strict and --per-scene (``geors label`` takes one SCENE, opened first).

    Used as ``@pipeline_options()``, ``@pipeline_options(models=False)``, ...
    """

    def decorate(f):
        f = progress_option(f)
        f = output_options(f, several_scenes=several_scenes)
        if models:
            f = model_execution_options(f)
        f = bands_option(f)
        f = tile_options(f)
        return config_options(f)

    return decorate


# option name -> (section, field, converter)
_OPTION_FIELDS = {
    "tile_size": ("tiling", "tile_size", None), "overlap": ("tiling", "overlap", None),
    "bands": ("tiling", "bands", parse_bands), "device": ("execution", "device", None),
    "batch_size": ("execution", "batch_size", None), "workers": ("execution", "workers", None),
    "scheduler": ("execution", "scheduler", None), "threads": ("execution", "threads", None),
    "resume": ("output", "resume", None), "overwrite": ("output", "overwrite", None),
    "strict": ("output", "strict", None), "crs": ("output", "crs", None),
    "per_scene": ("output", "per_scene", None),
    "model": ("detect", "model", None), "gate_threshold": ("detect", "gate_threshold", None),
    "score_threshold": ("detect", "score_threshold", None), "min_score": ("detect", "min_score", None),
    "sam": ("masks", "engine", None), "simplify": ("masks", "simplify_px", None),
    "segmenter": ("segment", "segmenter", None), "raster_out": ("segment", "raster_out", None),
}


def build_config(base: PipelineConfig, params: dict, ctx: click.Context | None = None,
                 optional: tuple[str, ...] = ()) -> PipelineConfig:
    """``base`` (defaults, or ``--config`` FILE) with the options the user gave applied on top.

    The command decides which stages exist (the sections set in ``base``); the
    file fills their options, and may switch on the ``optional`` sections (e.g.
    ``[segment]`` for ``geors run``).
    """
    ctx = ctx or click.get_current_context()
    cfg = base
    if params.get("config_file"):
        cfg = PipelineConfig.from_toml(params["config_file"])
        cfg = dataclasses.replace(cfg, **{
            sec: (getattr(cfg, sec) or getattr(base, sec)) if getattr(base, sec) is not None
            else (getattr(cfg, sec) if sec in optional else None) for sec in ("detect", "masks", "segment")})
    from click.core import ParameterSource

    changes = {}
    for name, (sec, fld, conv) in _OPTION_FIELDS.items():
        if name not in params or getattr(cfg, sec) is None:
            continue
        src = ctx.get_parameter_source(name)
        if params.get("config_file") and src not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = params[name]
        if value is None and src != ParameterSource.COMMANDLINE:
            continue
        changes[f"{sec}__{fld}"] = conv(value) if conv else value
    if params.get("no_gate") and cfg.detect is not None:
        changes["detect__use_gate"] = False
    if params.get("all_parts") and cfg.masks is not None:
        changes["masks__multipart"] = "all"
    cfg = cfg.replace(**changes).validate()
    if params.get("save_config"):
        save_config(params["save_config"], cfg, ctx)
    return cfg


def save_config(path: str, cfg: PipelineConfig, ctx: click.Context) -> None:
    """``--save-config``: the effective configuration as TOML, never over an input, in a folder that exists."""
    from pathlib import Path

    from geors.config import save_toml
    from geors.paths import check_outputs_not_inputs

    p = Path(path).expanduser()
    given = ctx.params
    check_outputs_not_inputs(
        {"--save-config": p, "-o": given.get("output"), "--raster-out": given.get("raster_out")},
        {"SCENES": given.get("scenes") or given.get("scene"), "--config": given.get("config_file"),
         "--boxes": given.get("boxes"), "--model": given.get("model"), "--sam": given.get("sam"),
         "--segmenter": given.get("segmenter"), "--class-map": given.get("class_map")})
    save_toml(p, cfg.to_toml())


def resume_command() -> str:
    """The command line that continues the current one: the same arguments with --resume."""
    args = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")]
    return shlex.join(["geors", *args, "--resume"])


def run_pipeline_command(fn, output: str, progress_kind: str) -> object:
    """Run ``fn(cancel_event)`` (which runs the pipeline) with signal handling, summary and exit codes.

    The first Ctrl-C or SIGTERM asks the pipeline to stop after the batches in
    flight (they are committed); a second Ctrl-C aborts at once (the file stays
    valid: every batch is its own transaction).
    """
    cancel = threading.Event()
    previous = {}

    def on_signal(signum, frame):
        if cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        cancel.set()
        again = " (Ctrl-C again to abort now)" if signum == signal.SIGINT else ""
        click.echo(f"\n{signal.Signals(signum).name}: stopping after the batches in flight{again}...", err=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    from geors.held_log import hold_warnings

    held = hold_warnings()  # the checks' warnings show only when the run goes ahead (pipeline: release_held)
    try:
        summary = fn(cancel)
    except Cancelled as exc:
        s = exc.summary
        saved = f"{s.saved} of {s.tiles} tiles are saved in {output}" if s is not None else f"{output} is valid"
        click.echo(f"Cancelled: {saved}. Continue with:\n  {resume_command()}", err=True)
        if s is not None:
            _print_summary(s, progress_kind)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        click.echo(f"\nAborted: every committed batch is in {output}. Continue with:\n  {resume_command()}",
                   err=True)
        raise SystemExit(130) from None
    except GeorsError:
        held.drop()  # refused: its one message, not the warnings of the checks before it
        raise
    finally:
        held.release()
        for sig, h in previous.items():
            signal.signal(sig, h)
    from geors.summary import add_hint, nodata_hint

    add_hint(summary, nodata_hint(summary))  # every command: an all-nodata run says so
    _print_summary(summary, progress_kind)
    problems = []
    if summary.failed:
        problems.append(f"{summary.failed} tile(s) failed (see the log and the 'message' field of geors_tiles in "
                        f"{output}); rerun with --resume to retry only those:\n  {resume_command()}")
    if summary.scenes_skipped:
        problems.append(f"{len(summary.scenes_skipped)} scene(s) could not be opened and were skipped: "
                        + "; ".join(f"{s['path']} ({s['reason']})" for s in summary.scenes_skipped))
    if problems:
        click.echo("Error: " + "\n".join(problems), err=True)
        raise SystemExit(1)
    return summary


def _print_summary(summary, progress_kind: str) -> None:
    for line in summary.lines():
        click.echo(line, err=True)
    d = summary.to_dict()
    if progress_kind == "jsonl":
        d = {"event": "summary", **d}
    click.echo(json.dumps(d, default=str))


def print_json(obj: dict, progress_kind: str = "none") -> None:
    """Machine output of commands without a run summary: one JSON object on stdout."""
    if progress_kind == "jsonl":
        obj = {"event": "summary", **obj}
    click.echo(json.dumps(obj, default=str))


def handle_errors(f):
    """Turn :class:`GeorsError` into a one-line message and its exit code (2 for bad input)."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except GeorsError as exc:
            click.echo(f"Error: {exc}", err=True)
            raise SystemExit(exc.exit_code) from None

    return wrapper
