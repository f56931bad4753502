"""Griffe extension: show Sphinx roles in geors' docstrings (``:func:`geors.run```) as code.

geors' docstrings are Google style but name other objects with reST roles, which
mkdocstrings would print literally. ``:class:`~geors.tiling.Tile``` becomes ``Tile``
in code font, ``:func:`geors.run``` becomes ``geors.run``.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|const|ref|py:\w+):`(~?)([^`]+)`")


def plain(text: str) -> str:
    def repl(m: re.Match) -> str:
        target = m.group(2)
        return f"`{target.rsplit('.', 1)[-1] if m.group(1) else target}`"

    return ROLE.sub(repl, text)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
