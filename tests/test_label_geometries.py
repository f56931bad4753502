"""Label and truth geometries that are not boxes or polygons are never used silently (issue 26.8).

Before: points given as TRUTH gave AP 0 (`geors eval detections`) or 0 truth outlines (`geors eval
masks`) with exit 0; a closed ring drawn as a line and an open line were both taken as boxes from
their extent, without a word; a missing --boxes/--labels file or --sam checkpoint was reported
without naming the option.

Decisions (docs/concepts.md, "Label geometries"): a line that closes on itself is read as the polygon
it rings, with a warning naming the features; points and open lines have no area: left out of boxes
and training labels with a warning (a file of only those is refused), refused as truth (exit 2).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from geors.cli.main import main

T = Affine(0.5, 0, 500_000.0, 0, -0.5, 4_500_000.0)
BOXES = [[10, 10, 40, 40], [100, 50, 130, 80]]


def _geo(b):
    from shapely.geometry import box

    return box(T.c + b[0] * 0.5, T.f - b[3] * 0.5, T.c + b[2] * 0.5, T.f - b[1] * 0.5)


@pytest.fixture
def case(tmp_path):
    import geopandas as gpd
    from shapely.geometry import LineString

    img = (np.random.default_rng(0).random((3, 200, 300)) * 100 + 50).astype(np.uint8)
    scene = tmp_path / "s.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=300, height=200, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=T) as ds:
        ds.write(img)
    polys = [_geo(b) for b in BOXES]
    files = {"scene": scene, "dir": tmp_path}
    for name, geoms in {
        "boxes": polys,
        "points": [p.centroid for p in polys],
        "rings": [LineString(p.exterior.coords) for p in polys],
        # box 1 as a polygon, then an open diagonal line whose extent is box 2
        "open_line": [polys[0], LineString([polys[1].exterior.coords[0], polys[1].exterior.coords[2]])],
    }.items():
        files[name] = tmp_path / f"{name}.gpkg"
        gpd.GeoDataFrame({"class": ["tree"] * 2}, geometry=geoms, crs=32617).to_file(files[name])
    out = tmp_path / "pred.gpkg"
    r = CliRunner().invoke(main, ["masks", str(scene), "--boxes", str(files["boxes"]), "-o", str(out),
                                  "--sam", "box", "--progress", "none"])
    assert r.exit_code == 0, r.output
    files["pred"] = out
    return files


@pytest.mark.parametrize("command", ["detections", "masks"])
def test_points_as_truth_are_refused(case, command):
    args = ["eval", command, str(case["pred"]), str(case["points"])]
    if command == "detections":
        args += ["--layer", "instances"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output  # was 0: AP50 0.0 / n_truth 0
    assert "points.gpkg" in r.output and "Point: 2" in r.output and "ids 1, 2" in r.output
    assert "boxes or polygons" in r.output


@pytest.mark.parametrize("command", ["detections", "masks"])
def test_closed_lines_as_truth_are_their_polygons(case, command, caplog):
    args = ["eval", command, str(case["pred"]), str(case["rings"])]
    if command == "detections":
        args += ["--layer", "instances", "--score-threshold", "0"]
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{"):])
    if command == "detections":
        assert res["overall"]["AP50"] == pytest.approx(1.0)
        assert any("2 closed lines (ids 1, 2)" in w for w in res["warnings"])
    else:
        assert res["miou_i"] == pytest.approx(1.0)
        assert "2 closed lines (ids 1, 2)" in caplog.text


def test_open_line_as_truth_is_refused(case):
    r = CliRunner().invoke(main, ["eval", "detections", str(case["pred"]), str(case["open_line"]),
                                  "--layer", "instances"])
    assert r.exit_code == 2, r.output
    assert "open line: 1" in r.output and "ids 2" in r.output


def test_closed_lines_as_boxes_warn_and_open_lines_are_left_out(case, caplog):
    from geors.io.box_labels import read_labels
    from geors.raster import open_scene

    scene = open_scene(case["scene"])
    with caplog.at_level(logging.WARNING, logger="geors.io.box_labels"):
        rings = read_labels(case["rings"], scene, min_visible=0.0)
    np.testing.assert_allclose(rings.boxes, BOXES)  # the rings' polygons: the same boxes
    assert "rings.gpkg: 2 closed lines (ids 1, 2) are taken as the polygons they ring" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geors.io.box_labels"):
        mixed = read_labels(case["open_line"], scene, min_visible=0.0)
    np.testing.assert_allclose(mixed.boxes, BOXES[:1])  # was 2 boxes: the line's extent taken as a box
    assert mixed.dropped == ((2, "no area (a point or open line)"),)
    assert "open_line.gpkg: 1 point/open line features without area skipped (ids 2)" in caplog.text


def test_masks_reports_the_open_line_by_id(case):
    out = case["dir"] / "m_open.gpkg"
    r = CliRunner().invoke(main, ["masks", str(case["scene"]), "--boxes", str(case["open_line"]), "-o", str(out),
                                  "--sam", "box", "--progress", "none"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["instances"] == 1
    assert any("2" in json.dumps(u) and "open line" in json.dumps(u) for u in summary["boxes_unanswered"]), summary


def test_missing_files_name_their_option(case, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["masks", str(case["scene"]), "--boxes", str(tmp_path / "nope.gpkg"), "-o",
                             str(tmp_path / "a.gpkg"), "--sam", "box", "--progress", "none"])
    assert r.exit_code == 2 and "nope.gpkg: label file not found (given as --boxes)" in r.output, r.output
    r = runner.invoke(main, ["label", str(case["scene"]), "--boxes", str(tmp_path / "nope.gpkg"), "-o",
                             str(tmp_path / "l.tif"), "--sam", "box", "--progress", "none"])
    assert r.exit_code == 2 and "(given as --boxes)" in r.output, r.output
    r = runner.invoke(main, ["masks", str(case["scene"]), "--boxes", str(case["boxes"]), "-o",
                             str(tmp_path / "b.gpkg"), "--sam", str(tmp_path / "nope.pth"), "--progress", "none"])
    assert r.exit_code == 2 and "--sam: SAM checkpoint" in r.output and "nope.pth" in r.output, r.output


def test_missing_training_labels_name_labels(case, tmp_path):
    r = CliRunner().invoke(main, ["train", "detector", "--scene", str(case["scene"]), "--labels",
                                  str(tmp_path / "nope.gpkg"), "-o", str(tmp_path / "m.pt")])
    assert r.exit_code == 2, r.output
    assert "nope.gpkg: label file not found (given as --labels)" in r.output


def test_segmentation_labels_read_closed_lines_as_polygons_and_name_what_they_leave_out(case, caplog):
    from rasterio.windows import Window

    from geors.io.seg_labels import IGNORE, open_label_source
    from geors.raster import open_scene

    scene = open_scene(case["scene"])
    with caplog.at_level(logging.WARNING, logger="geors.io.seg_labels"):
        rings = open_label_source(case["rings"], scene)  # was refused: "no feature has an area"
        painted = rings.read(Window(0, 0, 300, 200)) != IGNORE
    assert painted[12:38, 12:38].all() and painted[52:78, 102:128].all() and painted.sum() == 2 * 30 * 30
    assert "rings.gpkg: 2 closed lines (ids 1, 2) are taken as the polygons they ring" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geors.io.seg_labels"):
        open_label_source(case["open_line"], scene)  # the open line was left out without a word
    assert "open_line.gpkg: 1 features without area (points, open lines or empty) left out (ids 2)" in caplog.text


def test_missing_segmenter_labels_name_labels(case, tmp_path):
    r = CliRunner().invoke(main, ["train", "segmenter", "--scene", str(case["scene"]), "--labels",
                                  str(tmp_path / "nope.gpkg"), "--small-classes", "tree", "-o", str(tmp_path / "s.pt")])
    assert r.exit_code == 2, r.output
    assert "nope.gpkg: labels file not found (given as --labels)" in r.output
