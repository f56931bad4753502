"""The README's Python snippet runs as written.

The default suite touches no network: the snippet's ``fetch_neon()`` is given a
scene written here (a 0.1 m EPSG:32617 GeoTIFF named like the sample), and
anything in ``geors.samples`` that would start ``pip download`` fails the test.
The slow test runs the snippet on the real NEON sample (downloaded once into
the cache when missing: the only test that may use the network).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

import scenes

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python"):]
    section = section[:section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_snippet(workdir: Path, monkeypatch) -> dict:
    blocks = python_blocks()
    assert blocks, "README has no Python snippet"
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    summary = namespace["summary"]
    assert summary.status == "finished" and summary.tiles >= 1
    assert (workdir / "trees.gpkg").exists() and (workdir / "run.toml").exists()
    from geors.config import PipelineConfig

    assert PipelineConfig.from_toml(workdir / "run.toml") == namespace["config"]
    return namespace


def test_readme_python_snippet_runs_as_written_offline(tmp_path, monkeypatch):
    import geors.samples

    scene = tmp_path / "data" / "OSBS_029.tif"
    scene.parent.mkdir()
    rng = np.random.default_rng(0)
    img = rng.integers(40, 90, (3, 400, 400), dtype=np.uint8)  # 400 px at 0.1 m, like OSBS_029
    for cy, cx in ((80, 90), (200, 260), (310, 120)):          # a few bright round crowns
        yy, xx = np.ogrid[:400, :400]
        img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < 30 ** 2] = np.array([[70], [160], [60]], np.uint8)
    scenes.write(scene, img, "EPSG:32617", Affine(0.1, 0, 404000.0, 0, -0.1, 3285000.0))

    def no_network(*a, **k):
        raise AssertionError(f"the default suite must not download: {a}")

    monkeypatch.setattr(geors.samples, "fetch_neon", lambda force=False: {"OSBS_029.tif": scene})
    monkeypatch.setattr(geors.samples.subprocess, "run", no_network)  # pip download, if anything still calls it
    namespace = run_snippet(tmp_path, monkeypatch)
    assert namespace["osbs"] == scene and namespace["scene"].width == 400


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written_on_the_sample(tmp_path, monkeypatch):
    from geors.errors import DownloadError
    from geors.samples import fetch_neon

    try:
        fetch_neon()  # from the cache; downloads the deepforest wheel (network) only when it is missing
    except DownloadError as exc:  # offline machine without the sample: nothing to run the snippet on
        pytest.skip(f"NEON sample not available: {exc}")
    namespace = run_snippet(tmp_path, monkeypatch)
    assert namespace["summary"].detections > 0  # the built-in tree model finds trees on the real image
