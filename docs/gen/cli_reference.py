"""The CLI reference, written from the click group ``geors.cli.main:main`` itself.

Run alone to print the page: ``python docs/gen/cli_reference.py``.
"""

from __future__ import annotations

import click

WIDTH = 100


def walk(command: click.Command, parent: click.Context | None = None, name: str = "geors"):
    """Yield ``(full name, help text)`` for ``command`` and every subcommand, depth first."""
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=name, parent=parent, **settings)
    yield ctx.command_path, command.get_help(ctx)
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, sub), ctx, sub)


def markdown() -> str:
    from geors.cli.main import main

    out = []
    entries = list(walk(main))
    out.append("| command | what it does |\n|---|---|")
    for path, _ in entries[1:]:
        cmd = _resolve(main, path.split()[1:])
        short = " ".join((cmd.help or "").split("\n\n")[0].split()).replace("|", "\\|")
        out.append(f"| [`{path}`](#{_anchor(path)}) | {short} |")
    out.append("")
    for path, text in entries:
        depth = len(path.split())
        out.append(f"{'#' * min(depth + 1, 4)} `{path}` {{#{_anchor(path)}}}\n")
        out.append("```text\n" + text.rstrip() + "\n```\n")
    return "\n".join(out)


def _resolve(group: click.Group, names: list[str]) -> click.Command:
    cmd = group
    for n in names:
        cmd = cmd.get_command(click.Context(cmd), n)
    return cmd


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


if __name__ == "__main__":
    print(markdown())
