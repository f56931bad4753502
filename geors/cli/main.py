"""Entry point of the ``geors`` command. Each command lives in its own module."""

from __future__ import annotations

import logging

import click

from geors import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="geors")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def main(verbose: int, quiet: bool) -> None:
    """geors: detect and outline objects in very large georeferenced rasters.

    Exit codes: 0 ok, 1 failure while processing, 2 bad input or usage.
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("geors").setLevel(level)


def _register() -> None:
    # One line per command module; each module defines a click command or group.
    from geors.cli import info, sample, tiles

    for mod in (info, tiles, sample):
        main.add_command(mod.command)

    from geors.cli import detect as detect_cli  # gate + detector, and the full pipeline

    main.add_command(detect_cli.detect)
    main.add_command(detect_cli.run)

    from geors.cli import eval as eval_cli  # group; subcommands register with eval_cli.eval_group.add_command

    main.add_command(eval_cli.eval_group)

    from geors.cli import eval_masks, label, masks, models  # SAM masks, SAMRS labels, model files

    for mod in (masks, label, models):
        main.add_command(mod.command)

    from geors.cli import train  # R2-CNN gate + detector training

    main.add_command(train.command)
    eval_cli.eval_group.add_command(eval_masks.command)


_register()
