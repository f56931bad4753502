"""Options shared by several commands, and the error → exit-code wrapper."""

from __future__ import annotations

import functools
import logging

import click

from geors.errors import GeorsError

log = logging.getLogger("geors.cli")


def tile_options(f):
    f = click.option("--overlap", type=int, default=128, show_default=True,
                     help="Overlap d between neighbouring tiles, pixels (>= largest object).")(f)
    f = click.option("--tile", "tile_size", type=int, default=640, show_default=True,
                     help="Tile size D, pixels.")(f)
    return f


def bands_option(f):
    return click.option("--bands", type=str, default=None,
                        help="Comma-separated 1-based band indexes, e.g. 4,3,2. "
                             "Default: red/green/blue colour interpretation, else the first three.")(f)


def progress_option(f):
    return click.option("--progress", type=click.Choice(["auto", "bar", "jsonl", "none"]), default="auto",
                        show_default=True,
                        help="Progress reporting: bar on a terminal, jsonl = one JSON object per line on stdout.")(f)


def parse_bands(value: str | None) -> list[int] | None:
    if value is None or value == "":
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"--bands must be comma-separated integers, got {value!r}") from None


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
