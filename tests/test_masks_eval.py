"""geors eval masks with a truth file covering more than the scene: truth is restricted to the footprint."""

from __future__ import annotations

import json
import sqlite3

import geopandas as gpd
import pytest
from click.testing import CliRunner
from shapely.geometry import Point

from geors.evaluate.masks import evaluate_mask_files, recorded_scenes, restrict_to_footprint, scene_footprint
from tests.mask_scenes import CRS_UTM, ORIGIN, PIXEL, write_disc_scene


def _files(tmp_path):
    scene, _ = write_disc_scene(tmp_path / "discs.tif")  # 900 x 600 px at 0.5 m from ORIGIN
    x0, y0 = ORIGIN
    inside = [Point(x0 + 50 + 40 * i, y0 - 100).buffer(5) for i in range(5)]
    # a regional truth: the 5 objects in the scene, 20 far outside it and one mostly inside
    outside = [Point(x0 + 2000 + 30 * i, y0 - 100).buffer(5) for i in range(20)]
    edge = [Point(x0 + 900 * PIXEL - 1, y0 - 100).buffer(5)]  # 1 m inside the right edge: ~60 % inside
    pred = gpd.GeoDataFrame({"class": ["disc"] * 5}, geometry=inside, crs=CRS_UTM)
    pred.to_file(tmp_path / "pred.gpkg", layer="instances", driver="GPKG")
    truth = gpd.GeoDataFrame(geometry=inside + outside + edge, crs=CRS_UTM).to_crs(4326)  # any CRS
    truth.to_file(tmp_path / "truth.gpkg", driver="GPKG")
    return scene, tmp_path / "pred.gpkg", tmp_path / "truth.gpkg"


def test_truth_restricted_to_scene_footprint(tmp_path):
    scene, pred, truth = _files(tmp_path)
    everything = evaluate_mask_files(pred, truth, restrict=False)
    assert everything["n_truth"] == 26 and everything["miou_i"] < 0.25
    r = evaluate_mask_files(pred, truth, scenes=[scene])
    assert r["n_truth"] == 6 and r["n_truth_outside"] == 20  # half-in outline kept (min_inside 0.5)
    assert r["n_matched"] == 5 and r["miou_i"] > 0.8 and r["footprint_scenes"] == [str(scene)]
    strict = evaluate_mask_files(pred, truth, scenes=[scene], min_inside=0.9)
    assert strict["n_truth"] == 5 and strict["miou_i"] == pytest.approx(1.0, abs=0.01)


def test_footprint_from_geors_run_record(tmp_path):
    scene, pred, truth = _files(tmp_path)
    with sqlite3.connect(pred) as con:
        con.execute("CREATE TABLE geors_runs (fid INTEGER PRIMARY KEY, run_id TEXT, config TEXT)")
        con.execute("INSERT INTO geors_runs (run_id, config) VALUES (?, ?)",
                    ("r1", json.dumps({"scenes": [str(scene), str(tmp_path / "gone.tif")]})))
        con.execute("INSERT INTO geors_runs (run_id, config) VALUES (?, ?)",  # the newer record layout
                    ("r2", json.dumps({"scenes": [{"path": str(tmp_path / "other.tif"), "name": "other.tif"}]})))
    assert recorded_scenes(pred) == [str(scene), str(tmp_path / "gone.tif"), str(tmp_path / "other.tif")]
    r = evaluate_mask_files(pred, truth)  # the missing files are skipped
    assert r["footprint_scenes"] == [str(scene)] and r["n_truth"] == 6
    assert recorded_scenes(truth) == []


def test_footprint_geometry_and_clipping(tmp_path):
    scene, _, _ = _files(tmp_path)
    fp = scene_footprint([scene])
    x0, y0 = ORIGIN
    assert fp.bounds == pytest.approx((x0, y0 - 600 * PIXEL, x0 + 900 * PIXEL, y0))
    fp_wgs = scene_footprint([scene], "EPSG:4326")
    assert -180 < fp_wgs.bounds[0] < 180
    kept, out = restrict_to_footprint([Point(x0 + 10, y0 - 10).buffer(20)], fp, 0.2)
    assert out == 0 and kept[0].area < Point(0, 0).buffer(20).area


def test_eval_masks_cli_scene_option(tmp_path):
    from geors.cli.eval_masks import command

    scene, pred, truth = _files(tmp_path)
    res = CliRunner().invoke(command, [str(pred), str(truth), "--scene", str(scene)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["n_truth"] == 6 and out["n_truth_outside"] == 20
    res = CliRunner().invoke(command, [str(pred), str(truth), "--all-truth"])
    assert json.loads(res.output[res.output.index("{"):])["n_truth"] == 26
