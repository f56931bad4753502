"""Retrain from corrections (issue 28, the analyst's loop): an edited detections layer read against its run.

A real run of the default model on the NEON sample OSBS_029 (skipped without ``geors sample neon``), edited as
QGIS saves edits: rows deleted, rows drawn without the run's attributes, a row moved (re-written with its
attributes), a reviewed-area layer. Library: which rows are kept, drawn and deleted, the deleted boxes
recovered, the reviewed area and its pixels; refusals. CLI: exit 2 on bad inputs, a short real fine-tune that
changes the model, then ``geors detect`` with it.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from geors.cli.main import main
from geors.errors import LabelError
from geors.train.corrections import correction_tiles, read_corrections
from geors.train.crops import TrainTile, sample_batch

NEON = Path.home() / ".cache/geors/samples/neon"
RUN = ["--tile", "256", "--overlap", "64", "--threads", "1", "--no-gate"]  # 2 x 2 tiles over 400 x 400 px


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """(scene copy, untouched output of the default model) on OSBS_029, 4 tiles."""
    if not (NEON / "OSBS_029.tif").exists():
        pytest.skip("NEON sample not downloaded (geors sample neon)")
    d = tmp_path_factory.mktemp("corrections")
    scene = d / "OSBS_029.tif"
    shutil.copy(NEON / "OSBS_029.tif", scene)
    out = d / "run.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), *RUN])
    assert r.exit_code == 0, r.output
    return scene, out


def _rows(path: Path):
    import pyogrio

    return pyogrio.read_dataframe(path, layer="detections", fid_as_index=True)


def _pixels(geoms, scene: Path) -> np.ndarray:
    import rasterio
    import shapely

    with rasterio.open(scene) as ds:
        t = ds.transform  # north-up: x = c + a * col, y = f + e * row
    b = shapely.bounds(np.asarray(geoms, dtype=object))
    return np.column_stack([(b[:, 0] - t.c) / t.a, (b[:, 3] - t.f) / t.e, (b[:, 2] - t.c) / t.a,
                            (b[:, 1] - t.f) / t.e])


def _edit(src: Path, dst: Path, delete=(), draw=(), move=None, reviewed=None, crs=None) -> Path:
    """``src`` copied to ``dst`` and edited as QGIS saves edits: rows deleted by fid, boxes drawn (world
    coordinates, optional class) without the run's attributes, one row moved (re-written with its attributes,
    as a moved feature keeps them), a reviewed_area layer."""
    import geopandas as gpd
    import pyogrio
    import shapely

    shutil.copy(src, dst)
    rows = _rows(dst)
    crs = crs or rows.crs
    con = sqlite3.connect(dst)
    with con:
        con.executemany("DELETE FROM detections WHERE fid = ?", [(int(f),) for f in delete])
        if move is not None:
            con.execute("DELETE FROM detections WHERE fid = ?", (int(move[0]),))
    con.close()
    if move is not None:
        fid, (dx, dy) = move
        row = rows.loc[[fid]].copy()
        row["geometry"] = row.geometry.translate(dx, dy)
        pyogrio.write_dataframe(row.reset_index(drop=True), dst, layer="detections", append=True)
    if draw:
        gdf = gpd.GeoDataFrame({"class": [c for _, c in draw]}, geometry=[shapely.box(*b) for b, _ in draw],
                               crs=rows.crs)
        pyogrio.write_dataframe(gdf, dst, layer="detections", append=True)
    if reviewed is not None:
        pyogrio.write_dataframe(gpd.GeoDataFrame({"note": ["seen"]}, geometry=[shapely.box(*reviewed)], crs=crs),
                                dst, layer="reviewed_area")
    return dst


def _sql(path: Path, *statements) -> None:
    """SQL on a GeoPackage as a GIS would edit it (the R-tree triggers' functions registered)."""
    from geors.gpkg import register_st_functions

    con = sqlite3.connect(path)
    register_st_functions(con)
    with con:
        for sql, args in statements:
            con.execute(sql, args)
    con.close()


def _bounds(scene: Path):
    import rasterio

    with rasterio.open(scene) as ds:
        return tuple(ds.bounds)


def test_kept_drawn_and_deleted_rows_with_the_deleted_boxes_recovered(run_output, tmp_path):
    """Deleted rows are gone from the file: their boxes come back from a re-run of the run's model on their
    tiles and are the hard negatives; drawn rows (no run attributes, class empty: the model's only class) and
    kept rows (a moved one with its new box) are the objects; the reviewed area defaults to the edited tiles."""
    scene, out = run_output
    rows = _rows(out)
    assert len(rows) >= 10
    order = rows.sort_values("score", ascending=False).index.to_numpy()
    gone, moved = order[:3], order[3]
    x0, y0, x1, y1 = _bounds(scene)
    drawn = [((x0 + 2, y1 - 6, x0 + 5, y1 - 2), None), ((x0 + 8, y1 - 6, x0 + 11, y1 - 3), "Tree")]
    edited = _edit(out, tmp_path / "edited.gpkg", delete=gone, draw=drawn, move=(moved, (0.5, -0.3)))
    c = read_corrections(edited)
    assert c.counts["deleted"] == 3 and c.counts["drawn"] == 2 and c.counts["deleted_unknown"] == 0
    assert c.model.endswith("r2cnn_neon_trees.safetensors") and c.classes == ["tree"]
    assert c.counts["kept"] + c.counts["outside_reviewed"] == len(rows) - 3
    negatives = np.concatenate([s.negatives for s in c.scenes])
    want = _pixels(rows.loc[gone].geometry.to_numpy(), scene)
    assert len(negatives) == 3
    for b in want:  # the deleted boxes themselves, to float noise
        assert np.abs(negatives - b).max(axis=1).min() < 0.05
    positives = np.concatenate([s.positives for s in c.scenes])
    moved_px = _pixels(rows.loc[[moved]].geometry.translate(0.5, -0.3).to_numpy(), scene)[0]
    assert np.abs(positives - moved_px).max(axis=1).min() < 0.05  # the edited box, not the original
    assert np.abs(positives - _pixels(rows.loc[[moved]].geometry.to_numpy(), scene)[0]).max(axis=1).min() > 1
    drawn_px = _pixels([__import__("shapely").box(*b) for b, _ in drawn], scene)
    for b in drawn_px:
        assert np.abs(positives - b).max(axis=1).min() < 0.05
    assert all(cls == "tree" for s in c.scenes for cls in s.positive_classes)  # 'Tree' and empty -> the model's
    # default reviewed area: the cores of the tiles holding a drawn or deleted row (here not every tile)
    assert "tiles" in c.reviewed_from
    tiles, classes, info = correction_tiles(c)
    assert classes == ["tree"] and sum(len(t.boxes) for t in tiles) >= c.counts["kept"] + 2
    assert sum(0 if t.negatives is None else len(t.negatives) for t in tiles) == 3


def test_reviewed_area_layer_limits_objects_negatives_and_pixels(run_output, tmp_path):
    """A reviewed_area layer over the left half: rows centred right of it are not used (neither object nor
    background) and the training pixels right of it are 0."""
    scene, out = run_output
    rows = _rows(out)
    x0, y0, x1, y1 = _bounds(scene)
    mid = (x0 + x1) / 2
    cx = rows.geometry.centroid.x.to_numpy()
    left, right = rows.index[cx < mid].to_numpy(), rows.index[cx >= mid].to_numpy()
    assert len(left) >= 2 and len(right) >= 2
    edited = _edit(out, tmp_path / "edited.gpkg", delete=[left[0], right[0]], reviewed=(x0, y0, mid, y1))
    c = read_corrections(edited)
    assert c.reviewed_from.startswith("layer reviewed_area")
    assert c.counts["deleted"] == 1  # the right one lies outside the reviewed area
    assert c.counts["kept"] == len(left) - 1 and c.counts["outside_reviewed"] == len(right)
    assert (c.counts["kept"] < 20) == any("review more of the scene" in n for n in c.notes)
    tiles, _, _ = correction_tiles(c)
    half = 200  # scene pixels
    for t in tiles:
        assert t.origin[0] + t.image.shape[2] <= half + 1  # cut to the reviewed extent
    # --reviewed-area given as a file wins over the layer; a polygon in another CRS is reprojected
    import geopandas as gpd
    import shapely

    area = gpd.GeoDataFrame(geometry=[shapely.box(x0, y0, x1, y1)], crs=rows.crs).to_crs(4326)
    area.to_file(tmp_path / "all.gpkg")
    c2 = read_corrections(edited, reviewed_area=tmp_path / "all.gpkg")
    assert c2.counts["deleted"] == 2 and c2.counts["outside_reviewed"] == 0


def test_below_threshold_rows_are_background_unless_accepted(run_output, tmp_path):
    """Rows written below the threshold (passes_threshold 0) and left in place are background; set to 1, an
    object."""
    scene, out = run_output
    rows = _rows(out)
    edited = _edit(out, tmp_path / "edited.gpkg", delete=[rows.index[0]], reviewed=_bounds(scene))
    _sql(edited, ("UPDATE detections SET passes_threshold = 0 WHERE fid IN (?, ?)",
                  (int(rows.index[1]), int(rows.index[2]))))
    c = read_corrections(edited)
    assert c.counts["kept_below_threshold"] == 2 and c.counts["kept"] == len(rows) - 3
    _sql(edited, ("UPDATE detections SET passes_threshold = 1 WHERE fid = ?", (int(rows.index[1]),)))
    c = read_corrections(edited)
    assert c.counts["kept_below_threshold"] == 1 and c.counts["kept"] == len(rows) - 2


def test_refusals_name_the_file_and_what_to_do(run_output, tmp_path):
    import geopandas as gpd
    import shapely

    scene, out = run_output
    rows = _rows(out)
    with pytest.raises(LabelError, match="nothing was corrected"):
        read_corrections(out)
    plain = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"class": ["tree"]}, geometry=[shapely.box(0, 0, 1, 1)], crs=rows.crs).to_file(plain)
    with pytest.raises(LabelError, match="not the output of a geors run"):
        read_corrections(plain)
    with pytest.raises(LabelError, match="not a GeoPackage"):
        read_corrections(scene)
    edited = _edit(out, tmp_path / "edited.gpkg", delete=[rows.index[0]])
    nocrs = tmp_path / "nocrs.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(*_bounds(scene))]).to_file(nocrs)
    with pytest.raises(LabelError, match="no CRS"):
        read_corrections(edited, reviewed_area=nocrs)
    wrong = tmp_path / "wrong.gpkg"  # the right numbers in the wrong CRS: far from the scene
    gpd.GeoDataFrame(geometry=[shapely.box(*_bounds(scene))], crs=32633).to_file(wrong)
    with pytest.raises(LabelError, match="overlaps none of the run's scenes"):
        read_corrections(edited, reviewed_area=wrong)
    # drawn box with a class the model does not know
    bad = _edit(out, tmp_path / "bad.gpkg", draw=[((*_bounds(scene)[:2], _bounds(scene)[0] + 3,
                                                    _bounds(scene)[1] + 3), "car")])
    with pytest.raises(LabelError, match="class 'car'"):
        read_corrections(bad)


def test_a_moved_or_changed_scene(run_output, tmp_path):
    """The scene is found by the run record; moved: refused naming --scene, which relocates it; changed
    pixels: refused (the corrections were drawn on other pixels)."""
    scene, out = run_output
    rows = _rows(out)
    d = tmp_path / "moved"
    d.mkdir()
    moved = d / scene.name
    shutil.copy(scene, moved)
    edited = _edit(out, tmp_path / "edited.gpkg", delete=[rows.index[0]])
    # the run recorded another place
    _sql(edited, ("UPDATE geors_runs SET config = replace(config, ?, ?)", (str(scene), str(tmp_path / "gone.tif"))))
    with pytest.raises(LabelError, match="--scene"):
        read_corrections(edited)
    assert read_corrections(edited, scenes=[moved]).scenes[0].path == str(moved)
    import rasterio

    with rasterio.open(moved, "r+") as ds:
        band = ds.read(1)
        band[0, :10] = 255 - band[0, :10]
        ds.write(band, 1)
    with pytest.raises(LabelError, match="content changed"):
        read_corrections(edited, scenes=[moved])


def test_hard_fraction_centres_crops_on_negatives_and_changes_nothing_without_them():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (3, 200, 200)).astype(np.float32)
    boxes = np.array([[10, 10, 20, 20]], np.float32)
    neg = np.array([[150, 150, 160, 160]], np.float32)
    plain = TrainTile(img, boxes, np.zeros(1, np.int64))
    hard = TrainTile(img, boxes, np.zeros(1, np.int64), negatives=neg)
    a = sample_batch([plain], 6, 64, np.random.default_rng(3), pos_fraction=0.5, hard_fraction=1.0)
    b = sample_batch([plain], 6, 64, np.random.default_rng(3), pos_fraction=0.5, hard_fraction=0.0)
    for x, y in zip(a[0], b[0], strict=True):  # without negatives: the same draws
        np.testing.assert_array_equal(x, y)
    crops, _, _ = sample_batch([hard], 40, 64, np.random.default_rng(3), pos_fraction=0.0, hard_fraction=1.0)
    patch = img[:, 150:160, 150:160]
    # every crop shows the negative (up to flips and rotations): its pixel values are in each crop
    for c in crops:
        assert np.isin(np.round(patch[0, 5, 5], 6), np.round(c[:, :, :], 6)).any()


# ----------------------------------------------------------------------------- CLI
def test_cli_refuses_bad_corrections_with_exit_2(run_output, tmp_path):
    scene, out = run_output
    r = CliRunner().invoke(main, ["train", "detector", "--corrections", str(out), "-o", str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "nothing was corrected" in r.output
    r = CliRunner().invoke(main, ["train", "detector", "--corrections", str(scene), "-o",
                                  str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "not a GeoPackage" in r.output
    r = CliRunner().invoke(main, ["train", "detector", "--corrections", str(out), "--labels", "x.gpkg", "-o",
                                  str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "leave out --labels" in r.output
    r = CliRunner().invoke(main, ["train", "detector", "-o", str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "--corrections" in r.output
    r = CliRunner().invoke(main, ["train", "detector", "--corrections", str(out), "-o", str(out)])
    assert r.exit_code == 2  # never over an input
    r = CliRunner().invoke(main, ["train", "detector", "--scene", str(scene), "--labels", str(out),
                                  "--reviewed-area", str(out), "-o", str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "--reviewed-area goes with --corrections" in r.output


@pytest.mark.slow
def test_cli_fine_tunes_the_runs_model_from_corrections_then_detects(run_output, tmp_path):
    """A short real fine-tune (4 steps): a new model file (other weights than the run's unless those validate
    better: then they are kept, and the record says so), the corrections recorded, and `geors detect` runs
    with it."""
    import json

    from geors.models.registry import read_metadata

    scene, out = run_output
    rows = _rows(out)
    x0, y0, x1, y1 = _bounds(scene)
    edited = _edit(out, tmp_path / "edited.gpkg", delete=list(rows.index[:3]),
                   draw=[((x0 + 2, y1 - 6, x0 + 5, y1 - 2), None)], reviewed=(x0, y0, x1, y1))
    model = tmp_path / "ft.safetensors"
    r = CliRunner().invoke(main, ["train", "detector", "--corrections", str(edited), "-o", str(model),
                                  "--steps", "4", "--validations", "1", "--batch-size", "2", "--crop", "128",
                                  "--device", "cpu", "--progress", "none"])
    assert r.exit_code == 0, r.output
    summary = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["corrections"]["deleted"] == 3 and summary["corrections"]["drawn"] == 1
    meta = read_metadata(model)
    base = read_metadata(Path(read_corrections(edited).model))
    tr = meta["training"]
    assert tr["steps"] == 4 and tr["validation"][0]["starting_weights"]
    if tr["kept_starting_weights"]:  # 4 steps validated no better than the run's model: that model is kept
        assert meta["weights_sha256"] == base["weights_sha256"]
        assert max(v["val_AP50"] for v in tr["validation"][1:]) <= tr["validation"][0]["val_AP50"]
    else:
        assert meta["weights_sha256"] != base["weights_sha256"]
    assert meta["training"]["init_from"]["weights_sha256"] == base["weights_sha256"]
    assert meta["training"]["corrections"]["counts"]["deleted"] == 3
    assert meta["arch_args"]["empty_negatives"] is True
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(tmp_path / "after.gpkg"), "--model", str(model),
                                  *RUN])
    assert r.exit_code == 0, r.output


def test_a_pasted_copy_of_a_row_is_drawn_not_kept(run_output, tmp_path):
    """Copy-paste in QGIS duplicates a row's attributes (run_id, tile_id, score): the copy (higher fid) is a
    drawn object, and no row counts as deleted."""
    import pyogrio

    scene, out = run_output
    rows = _rows(out)
    edited = _edit(out, tmp_path / "edited.gpkg")
    copy = rows.loc[[rows.index[0]]].copy()
    copy["geometry"] = copy.geometry.translate(3.0, 0.0)
    pyogrio.write_dataframe(copy.reset_index(drop=True), edited, layer="detections", append=True)
    c = read_corrections(edited)
    assert c.counts["drawn"] == 1 and c.counts["deleted"] == 0
    assert c.counts["kept"] + c.counts["outside_reviewed"] == len(rows)
