"""A scene that is entirely nodata ends with exit 0 and says so, whatever the command (issue 26.8).

Before: `geors detect`/`geors run` printed the hint (their empty-result hint), `geors segment` and
`geors tiles` finished silently ("1 nodata" in the tile count, no word on what to check).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from geors.cli.main import main
from geors.summary import NODATA_BOXES_HINT, NODATA_HINT


@pytest.fixture
def blank(tmp_path):
    path = tmp_path / "blank.tif"
    with rasterio.open(path, "w", driver="GTiff", width=300, height=200, count=3, dtype="uint8", crs="EPSG:32617",
                       transform=Affine(0.1, 0, 500_000.0, 0, -0.1, 4_500_000.0), nodata=0) as ds:
        ds.write(np.zeros((3, 200, 300), np.uint8))
    return path


@pytest.mark.parametrize("command", [["segment"], ["tiles"], ["detect"], ["run", "--sam", "box"]])
def test_all_nodata_scene_says_so(blank, tmp_path, command):
    out = tmp_path / "out.gpkg"
    r = CliRunner().invoke(main, [command[0], str(blank), "-o", str(out), *command[1:], "--progress", "none"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["nodata"] == summary["tiles"] >= 1
    assert summary["hints"] == [NODATA_HINT]
    assert f"hint: {NODATA_HINT}" in r.output  # the people's summary too (stderr)


@pytest.fixture
def one_box(tmp_path):
    """One box (CRS units) inside the blank scene, with a class."""
    import geopandas as gpd
    import shapely

    path = tmp_path / "boxes.gpkg"
    gpd.GeoDataFrame({"class": ["tree"]}, geometry=[shapely.box(500_010.0, 4_499_990.0, 500_015.0, 4_499_995.0)],
                     crs="EPSG:32617").to_file(path, layer="boxes")
    return path


@pytest.mark.parametrize("command", ["masks", "label"])
def test_boxes_on_an_all_nodata_scene_say_so(blank, one_box, tmp_path, command):
    """`geors masks`/`geors label`: a box on an all-nodata scene is outlined as its box (the engine's rule), and
    the run says that the boxes lie on nodata. Before: the tiles counted as "done", no hint, exit 0."""
    out = tmp_path / ("out.gpkg" if command == "masks" else "label.tif")
    r = CliRunner().invoke(main, [command, str(blank), "--boxes", str(one_box), "--sam", "box", "-o", str(out),
                                  "--progress", "none"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["instances"] == 1  # the box is still answered
    assert summary["nodata"] == summary["tiles"] >= 1 and summary["done"] == 0
    assert summary["hints"] == [NODATA_BOXES_HINT]
    assert f"hint: {NODATA_BOXES_HINT}" in r.output
