"""Skip ``slow`` tests unless they were asked for.

Until the project's pytest configuration deselects the ``slow`` marker by
default, these tests guard themselves: they run with ``-m slow`` (or an
expression selecting ``slow``) or with ``GEORS_SLOW=1``.
"""

from __future__ import annotations

import os

import pytest


def skip_unless_slow_selected(request: pytest.FixtureRequest) -> None:
    expr = request.config.getoption("markexpr", "") or ""
    selected = "slow" in expr and "not slow" not in expr
    if not selected and os.environ.get("GEORS_SLOW") != "1":
        pytest.skip("slow: run with -m slow or GEORS_SLOW=1")
