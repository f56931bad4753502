"""``geors sample NAME``: fetch a real sample scene into the cache and print its paths."""

from __future__ import annotations

import click

from geors.cli.options import handle_errors
from geors.samples import fetch_neon

SAMPLES = {"neon": fetch_neon}
"""Sample name -> the function that fetches it into the cache and returns ``{file name: path}``."""


@click.command("sample")
@click.argument("name", type=click.Choice(sorted(SAMPLES)))
@click.option("--force", is_flag=True, help="Download again even if cached.")
@handle_errors
def command(name, force):
    """Fetch sample data. neon: NEON aerial RGB with tree-crown boxes (0.1 m, EPSG:32617)."""
    for _, path in sorted(SAMPLES[name](force=force).items()):
        click.echo(str(path))
