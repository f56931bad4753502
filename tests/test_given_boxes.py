"""A box the user gives is always answered (issue 26.2): outlined, clipped, or reported by id with the reason.

The scene: 300 x 200 px, its right third nodata. The boxes (a GeoPackage with the user's own
``tree_id`` field), in pixels:

1. ``[10, 10, 40, 40]``     inside, on valid pixels;
2. ``[190, 50, 220, 80]``   centre on nodata (x 205);
3. ``[280, 100, 320, 120]`` half outside the right edge, centre on nodata once clipped;
4. ``[150, 190, 170, 230]`` a quarter inside the bottom edge (was dropped as "less than half inside");
5. ``[400, 10, 420, 30]``   wholly outside the scene.

Before the fix `geors masks` wrote 1 instance (box 1) with ``detection_fid`` NULL and no trace of
``tree_id``, and `geors label` said the others "gave an empty mask".
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from geors.cli.main import main

T = Affine(0.5, 0, 500_000.0, 0, -0.5, 4_500_000.0)
BOXES = [[10, 10, 40, 40], [190, 50, 220, 80], [280, 100, 320, 120], [150, 190, 170, 230], [400, 10, 420, 30]]


@pytest.fixture
def case(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    img = (np.random.default_rng(0).random((3, 200, 300)) * 100 + 50).astype(np.uint8)
    img[:, :, 200:] = 0
    scene = tmp_path / "s.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=300, height=200, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=T, nodata=0) as ds:
        ds.write(img)

    def geo(b):
        return box(T.c + b[0] * 0.5, T.f - b[3] * 0.5, T.c + b[2] * 0.5, T.f - b[1] * 0.5)

    boxes = tmp_path / "boxes.gpkg"
    gpd.GeoDataFrame({"tree_id": [101, 102, 103, 104, 105], "class": ["tree"] * 5},
                     geometry=[geo(b) for b in BOXES], crs=32617).to_file(boxes)
    return {"scene": scene, "boxes": boxes, "dir": tmp_path}


def test_masks_answers_every_box_with_its_attributes(case):
    import pyogrio

    out = case["dir"] / "m.gpkg"
    r = CliRunner().invoke(main, ["masks", str(case["scene"]), "--boxes", str(case["boxes"]), "-o", str(out),
                                  "--sam", "box", "--progress", "none"])
    assert r.exit_code == 0, r.output
    assert "UserWarning" not in r.output  # a GeoPackage as --boxes: no raw pyogrio warning (26.6)
    df = pyogrio.read_dataframe(out, layer="instances")
    assert sorted(df["box_fid"]) == [1, 2, 3, 4]  # failed before: [None] (only box 1, no id)
    attrs = {int(f): json.loads(a) for f, a in zip(df["box_fid"], df["box_attributes"], strict=True)}
    assert {f: a["tree_id"] for f, a in attrs.items()} == {1: 101, 2: 102, 3: 103, 4: 104}
    # the partly outside boxes are clipped to the scene
    b4 = df.loc[df["box_fid"] == 4].geometry.iloc[0].bounds
    assert b4[1] == pytest.approx(T.f - 200 * 0.5)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["instances"] == 4
    assert summary["boxes_unanswered"] == [{"scene": "s.tif", "tile_id": "r0_c0", "box_fid": 5,
                                            "reason": "outside the scene"}]
    ledger = pyogrio.read_dataframe(out, layer="geors_tiles")
    assert "no outline for box 5 (outside the scene)" in " ".join(ledger["message"].fillna(""))


def test_label_paints_boxes_on_nodata_and_names_the_cause(case, caplog):
    out = case["dir"] / "l.tif"
    r = CliRunner().invoke(main, ["label", str(case["scene"]), "--boxes", str(case["boxes"]), "-o", str(out),
                                  "--sam", "box", "--progress", "none"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout.strip().splitlines()[-1])["extra"]["label"]
    assert rep["n_boxes"] == 5 and rep["n_empty"] == 0
    assert rep["boxes_unanswered"] == [{"box_fid": 5, "reason": "outside the scene", "attributes": None}]
    assert "empty mask" not in r.output
    with rasterio.open(out) as ds:
        lab = ds.read(1)
    assert (lab[55:75, 195:215] != 255).all()  # box 2, centred on nodata: painted (failed before)
    assert (lab[195:200, 155:165] != 255).all()  # box 4, a quarter inside: painted


def test_unanswered_message_groups_ids_by_reason():
    from geors.stages import unanswered_message

    msg = unanswered_message([{"box_fid": 3, "reason": "empty mask"}, {"box_fid": 9, "reason": "empty mask"},
                              {"box_fid": 4, "reason": "outside the scene"}])
    assert msg == "no outline for boxes 3, 9 (empty mask); no outline for box 4 (outside the scene)"


def test_a_geopackage_of_several_layers_as_boxes_gives_one_clear_message(case, caplog):
    """Issue 26.6: a geors GeoPackage as --boxes printed pyogrio's raw UserWarning ("More than one layer
    found ... Specify layer parameter"); now the boxes come from its first layer with geometry, and a file
    with several such layers is named in one message that says which layer was read and how to choose."""
    import logging
    import warnings

    import geopandas as gpd

    first = case["dir"] / "m.gpkg"
    r = CliRunner().invoke(main, ["masks", str(case["scene"]), "--boxes", str(case["boxes"]), "-o", str(first),
                                  "--sam", "box", "--progress", "none"])
    assert r.exit_code == 0, r.output
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = CliRunner().invoke(main, ["masks", str(case["scene"]), "--boxes", str(first), "-o",
                                      str(case["dir"] / "again.gpkg"), "--sam", "box", "--progress", "none"])
    assert r.exit_code == 0, r.output
    assert not [w for w in seen if "layer" in str(w.message)]  # failed before: pyogrio's UserWarning
    two = case["dir"] / "two.gpkg"
    gpd.read_file(case["boxes"]).to_file(two, layer="a")
    gpd.read_file(case["boxes"]).to_file(two, layer="b")
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(main, ["masks", str(case["scene"]), "--boxes", str(two), "-o",
                                      str(case["dir"] / "two_out.gpkg"), "--sam", "box", "--progress", "none"])
    assert r.exit_code == 0, r.output
    assert "2 layers with geometry (a, b); reading the boxes from 'a', choose another with --layer" in caplog.text
