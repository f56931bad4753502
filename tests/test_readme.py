"""The README's Python snippet runs as written (on the NEON sample it downloads)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python"):]
    section = section[:section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_snippet_runs_as_written(tmp_path, monkeypatch):
    from geors.errors import DownloadError
    from geors.samples import fetch_neon

    try:
        fetch_neon()
    except DownloadError as exc:  # offline machine without the sample: nothing to run the snippet on
        pytest.skip(f"NEON sample not available: {exc}")
    blocks = python_blocks()
    assert blocks, "README has no Python snippet"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    summary = namespace["summary"]
    assert summary.status == "finished" and summary.tiles >= 1
    assert (tmp_path / "trees.gpkg").exists() and (tmp_path / "run.toml").exists()
    from geors.config import PipelineConfig

    assert PipelineConfig.from_toml(tmp_path / "run.toml") == namespace["config"]
