"""``geors models list|info|download``: the models geors knows, where they are, fetching them."""

from __future__ import annotations

import json
import os

import click

from geors.cli.options import handle_errors


def _sam_rows() -> list[dict]:
    from geors import sam_weights

    rows = []
    for e in sam_weights.SAM_CHECKPOINTS.values():
        path = sam_weights.cache_dir() / e.filename
        rows.append({
            "name": e.name, "kind": "sam", "architecture": e.kind, "file": e.filename, "url": e.url,
            "sha256": e.sha256, "size_bytes": e.size, "path": str(path), "installed": path.is_file(),
            "package": e.package,
        })
    return rows


def _all_rows() -> list[dict]:
    rows = []
    try:  # detector entries from the model registry, when it is there
        from geors.models.registry import list_models
    except ImportError:
        list_models = None
    if list_models is not None:
        rows.extend(list_models())
    return rows + _sam_rows()


@click.group("models")
def models_group() -> None:
    """List, describe and download models (detectors and SAM checkpoints)."""


command = models_group


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def list_command(as_json: bool) -> None:
    """Known models, and whether each is installed."""
    rows = _all_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        state = "installed" if r.get("installed") else "not installed"
        click.echo(f"{r['name']:<16} {r.get('kind', ''):<9} {state:<14} {r.get('path', '')}")


@models_group.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True,
              help="For programs: one line of JSON that also holds an installed detector's file metadata "
                   "(classes, tile size, overlap, gate and score thresholds, class colours when present); "
                   "NAME may then also be a .safetensors model file.")
@handle_errors
def info_command(name: str, as_json: bool) -> None:
    """Details of one model of 'geors models list' (e.g. sam-vit_b): kind, path, whether it is installed,
    sha256 (and classes, bands, tile size of a model; URL and size of a SAM download), as indented JSON.

    With --json: the same on one line, plus an installed detector's file metadata.
    """
    from geors.errors import ModelError

    for r in _all_rows():
        if r["name"] == name or r["name"] == f"sam-{name}":
            if as_json and r.get("kind") == "detector" and r.get("installed"):
                r = {**r, "metadata": _file_metadata(r["path"])}
            click.echo(json.dumps(r, indent=None if as_json else 2, default=str))
            return
    if as_json and name.endswith(".safetensors") and os.path.isfile(name):
        meta = _file_metadata(name)
        click.echo(json.dumps({"name": meta.get("name", name), "kind": "detector", "path": name,
                               "installed": True, "metadata": meta}, default=str))
        return
    raise ModelError(f"unknown model '{name}'; 'geors models list' shows the known ones.")


def _file_metadata(path: str) -> dict:
    """A model file's geors metadata without the bulky training record (for programs such as the QGIS plugin)."""
    from geors.models.registry import read_metadata

    return {k: v for k, v in read_metadata(path).items() if k != "training"}


@models_group.command("download")
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Directory to save into (default: the geors cache, $GEORS_CACHE_DIR/models or "
                   "~/.cache/geors/models).")
@handle_errors
def download_command(name: str, dest: str | None) -> None:
    """Download a SAM checkpoint (sam-vit_b, sam-vit_l, sam-vit_h, sam-vit_t) and check its sha256."""
    from geors import sam_weights

    entry = sam_weights.checkpoint_entry(name)
    with click.progressbar(length=entry.size, label=f"{entry.name}", file=click.get_text_stream("stderr")) as bar:
        last = [0]

        def progress(done: int, total: int) -> None:
            bar.update(done - last[0])
            last[0] = done

        path = sam_weights.download(name, dest, progress=progress)
    click.echo(str(path))
