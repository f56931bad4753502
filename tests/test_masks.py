"""Mask engines (box, GrabCut), RH-boxes, box windows, polygons in world coordinates, mIoU metrics."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize
from shapely.geometry import box as sbox

from geors.errors import ConfigError, ModelError
from geors.evaluate.masks import miou_instances
from geors.masks import (
    BoxEngine,
    GrabCutEngine,
    box_fits,
    box_window,
    instances_for_tile,
    make_mask_engine,
    mask_to_geometry,
    rh_box,
)
from tests.mask_scenes import DISCS, disc_image, transform, write_disc_scene


def disc_boxes(discs=DISCS) -> np.ndarray:
    return np.array([[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in discs], dtype=float)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def disc_scene(tmp_path_factory):
    from geors.raster import open_scene

    path, truth = write_disc_scene(tmp_path_factory.mktemp("discs") / "discs.tif")
    return open_scene(path), truth


@pytest.fixture
def no_sam_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("GEORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GEORS_SAM_CHECKPOINT", raising=False)


# ------------------------------------------------------------------ boxes


def test_rh_box_of_rotated_rectangle():
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    half = np.array([[-10, -4], [10, -4], [10, 4], [-10, 4]], float)
    corners = half @ np.array([[c, s], [-s, c]]) + [100, 50]
    b = rh_box(corners)
    ex = 10 * c + 4 * s
    ey = 10 * s + 4 * c
    np.testing.assert_allclose(b, [100 - ex, 50 - ey, 100 + ex, 50 + ey])
    batch = rh_box(np.stack([corners, corners + 5]))
    assert batch.shape == (2, 4)
    np.testing.assert_allclose(batch[1], b + 5)
    with pytest.raises(ValueError):
        rh_box(np.zeros((4, 3)))


def test_engines_accept_rotated_corners_as_rh_boxes():
    img = np.zeros((60, 60, 3), np.uint8)
    corners = np.array([[[20, 10], [40, 20], [30, 40], [10, 30]]], float)
    m_rot, _ = BoxEngine().predict(img, corners)
    m_rh, _ = BoxEngine().predict(img, np.array([[10, 10, 40, 40]], float))
    assert (m_rot == m_rh).all() and m_rh[0, 10:40, 10:40].all() and m_rh.sum() == 900


def test_box_fits_and_box_window():
    b = np.array([[10, 10, 50, 50], [600, 10, 650, 40], [2, 300, 30, 320]], float)
    np.testing.assert_array_equal(box_fits(b, 640, 640, 4), [True, False, False])
    # window of the tile size, centred on the box, inside the scene
    w = box_window((1000, 500, 1040, 540), 5000, 3000, size=640, margin=16)
    assert (w.width, w.height) == (640, 640)
    assert w.col_off <= 1000 - 16 and w.col_off + w.width >= 1040 + 16
    assert abs((w.col_off + 320) - 1020) <= 1 and abs((w.row_off + 320) - 520) <= 1
    # near the scene edge: shifted inside
    w = box_window((4990, 2980, 5000, 3000), 5000, 3000, size=640)
    assert (w.col_off, w.row_off, w.width, w.height) == (4360, 2360, 640, 640)
    # a box larger than the window: box + margin
    w = box_window((100, 100, 900, 200), 5000, 3000, size=640, margin=16)
    assert w.width == 832 and w.col_off <= 84 and w.col_off + w.width >= 916
    # a scene smaller than the window: starts at the origin, padded past the end
    w = box_window((10, 10, 50, 50), 300, 200, size=640)
    assert (w.col_off, w.row_off, w.width, w.height) == (0, 0, 640, 640)


# ------------------------------------------------------------------ engines


def test_box_engine_is_the_box():
    img = np.zeros((50, 80, 3), np.uint8)
    masks, scores = BoxEngine().predict(img, np.array([[10, 5, 20, 25], [70.2, 40.4, 90, 60]]))
    assert masks.shape == (2, 50, 80) and masks.dtype == bool
    assert masks[0, 5:25, 10:20].all() and masks[0].sum() == 200
    # clipped to the image; pixel centres inside the box
    assert masks[1, 40:50, 70:80].all() and masks[1].sum() == 10 * 10  # centres 70.5 >= 70.2, 40.5 >= 40.4
    np.testing.assert_array_equal(scores, [1.0, 1.0])


def test_grabcut_recovers_discs():
    img, truth = disc_image()
    masks, scores = GrabCutEngine().predict(img, disc_boxes())
    for k, (m, t) in enumerate(zip(masks, truth, strict=True)):
        assert iou(m, t) > 0.8, f"disc {k}: IoU {iou(m, t):.3f}"
        assert 0.5 < scores[k] <= 1.0  # fill ratio of a disc in its box is about pi/4
    # a box over flat background finds no object: falls back to the box with score 0
    flat = np.full((100, 100, 3), 128, np.uint8)
    m, s = GrabCutEngine().predict(flat, np.array([[30, 30, 60, 60]], float))
    assert s[0] == 0.0 and m[0, 30:60, 30:60].all()


def test_engine_input_checks():
    with pytest.raises(ValueError, match="uint8"):
        BoxEngine().predict(np.zeros((10, 10), np.uint8), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="boxes"):
        BoxEngine().predict(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 3)))


def test_make_mask_engine_specs(no_sam_checkpoint, caplog, monkeypatch):
    import geors.masks.factory as factory
    from geors.masks import WatershedEngine

    assert make_mask_engine("box").method == "box"
    assert make_mask_engine("grabcut").method == "grabcut"
    assert make_mask_engine("watershed").method == "watershed"
    monkeypatch.setattr(factory, "_told_no_sam", False)  # the warning is given once per process
    with caplog.at_level(logging.WARNING, logger="geors.masks"):
        eng = make_mask_engine("auto")
    assert isinstance(eng, WatershedEngine)  # weight-free default without a SAM checkpoint
    assert "no SAM checkpoint found" in caplog.text and "geors models download sam-vit_b" in caplog.text
    with pytest.raises(ModelError, match="geors models download sam-vit_l") as exc:
        make_mask_engine("vit_l")
    assert "sam_vit_l_0b3195.pth" in str(exc.value)
    with pytest.raises(ModelError, match="does not exist"):
        make_mask_engine("/nonexistent/sam.pth")
    with pytest.raises(ConfigError, match="unknown mask engine"):
        make_mask_engine("deeplab")


# ------------------------------------------------------------------ polygons


def test_mask_to_geometry_world_coordinates():
    t = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)
    m = np.zeros((40, 60), bool)
    m[10:20, 30:50] = True  # rows 10..19, cols 30..49
    g = mask_to_geometry(m, t, simplify_px=0)
    assert g.equals(sbox(1000 + 30 * 0.5, 2000 - 20 * 0.5, 1000 + 50 * 0.5, 2000 - 10 * 0.5))
    # exact outline rasterises back to the same pixels
    disc = np.hypot(*np.mgrid[-20:20, -30:30] + 0.5) < 12
    back = rasterize([(mask_to_geometry(disc, t, simplify_px=0), 1)], out_shape=disc.shape, transform=t)
    assert (back.astype(bool) == disc).all()
    assert mask_to_geometry(np.zeros((5, 5), bool), t) is None


def test_mask_to_geometry_multipart_and_holes():
    t = Affine.identity()
    m = np.zeros((50, 50), bool)
    m[5:25, 5:25] = True
    m[10:12, 10:12] = False  # 4-px hole: filled
    m[15:20, 15:20] = False  # 25-px hole: kept
    m[40:44, 40:44] = True  # second part, 16 px
    m[0, 49] = True  # 1-px speck
    largest = mask_to_geometry(m, t, simplify_px=0)
    assert largest.geom_type == "Polygon" and largest.area == 400 - 25 and len(largest.interiors) == 1
    everything = mask_to_geometry(m, t, simplify_px=0, multipart="all")
    assert everything.geom_type == "MultiPolygon" and len(everything.geoms) == 2  # speck < min_part_px
    assert everything.area == 400 - 25 + 16
    with pytest.raises(ConfigError):
        mask_to_geometry(m, t, multipart="biggest")


def test_simplification_tolerance_in_pixels():
    t = Affine(2.0, 0, 0, 0, -2.0, 0)
    disc = np.hypot(*np.mgrid[-30:30, -30:30] + 0.5) < 25
    exact = mask_to_geometry(disc, t, simplify_px=0)
    simple = mask_to_geometry(disc, t, simplify_px=1.0)
    assert len(simple.exterior.coords) < len(exact.exterior.coords)
    # Hausdorff distance stays within the tolerance (1 px = 2 CRS units)
    assert exact.hausdorff_distance(simple) <= 2.0 + 1e-9


# ------------------------------------------------------------------ scene level


def test_box_masks_through_the_pipeline_world_coordinates(disc_scene, tmp_path):
    """``geors masks``' production path: BoxMasksStage in the pipeline, each box decoded once by its owner tile."""
    import pyogrio

    from geors.config import ExecutionConfig, MaskConfig, PipelineConfig, TilingConfig
    from geors.pipeline import process_scenes
    from geors.stages import BoxMasksStage

    scene, truth = disc_scene
    out = tmp_path / "m.gpkg"
    config = PipelineConfig(detect=None, masks=MaskConfig("grabcut", simplify_px=0), tiling=TilingConfig(256, 32),
                            execution=ExecutionConfig(batch_size=2))  # disc 2 (r=45) crosses tile edges
    summary = process_scenes([scene], out, BoxMasksStage((disc_boxes(), None), config.masks), config)
    df = pyogrio.read_dataframe(out, layer="instances")
    assert summary.instances == len(df) == len(truth)  # every box once, none twice along seams
    t = transform()
    for tm in truth:
        truth_poly = mask_to_geometry(tm, t, simplify_px=0)
        hits = df[df.geometry.intersects(truth_poly.centroid)]
        assert len(hits) == 1
        g = hits.geometry.iloc[0]
        assert hits["mask_method"].iloc[0] == "grabcut"
        assert g.intersection(truth_poly).area / g.union(truth_poly).area > 0.8
    assert df["score"].isna().all() and df["detection_fid"].isna().all()  # given boxes, not detections


def test_instances_for_tile_reuses_tile_pixels(disc_scene, monkeypatch):
    from geors.results import Detection
    from geors.tiling import TileGrid

    scene, truth = disc_scene
    grid = TileGrid(scene, size=256, overlap=32)
    tile = grid.owner(100, 100)
    img = scene.read_tile(tile)
    boxes = disc_boxes()[:1] - [tile.col_off, tile.row_off] * 2
    dets = [Detection(geometry=None, class_name="tank", class_id=3, score=0.9, box_px=tuple(boxes[0])),
            Detection(geometry=None, class_name="tank", class_id=3, score=0.1, box_px=None)]
    calls = []
    orig = type(scene).read_window
    monkeypatch.setattr(type(scene), "read_window", lambda self, *a, **k: calls.append(a) or orig(self, *a, **k))
    inst = instances_for_tile(scene, tile, img, dets, GrabCutEngine(), simplify_px=0)
    assert calls == []  # the box fits: no second read
    assert len(inst) == 1 and inst[0].detection_index == 0 and inst[0].class_id == 3
    assert inst[0].mask_method == "grabcut" and inst[0].score == 0.9
    truth_poly = mask_to_geometry(truth[0], transform(), simplify_px=0)
    assert inst[0].geometry.intersection(truth_poly).area / inst[0].geometry.union(truth_poly).area > 0.8
    # a box crossing the tile edge is decoded on its own window by an engine that reads pixels
    edge = grid.tile(0, 0)
    eb = (edge.width - 20, 10, edge.width + 20, 50)
    edge_img = scene.read_tile(edge)
    calls.clear()
    inst = instances_for_tile(scene, edge, edge_img, [Detection(None, "x", 0, 1.0, box_px=eb)], GrabCutEngine(),
                              simplify_px=0)
    assert len(calls) == 1 and len(inst) == 1
    # ... and the box engine reads no pixels at all, but still outlines the whole box across the edge
    calls.clear()
    inst = instances_for_tile(scene, edge, edge_img, [Detection(None, "x", 0, 1.0, box_px=eb)], BoxEngine(),
                              simplify_px=0)
    assert calls == []
    x0, y0 = transform() @ (edge.col_off + eb[0], edge.row_off + eb[1])
    x1, y1 = transform() @ (edge.col_off + eb[2], edge.row_off + eb[3])
    assert inst[0].geometry.equals(sbox(x0, y1, x1, y0))
    assert inst[0].mask_method == "box"


# ------------------------------------------------------------------ metrics


def test_miou_instances_definitions():
    truth = [sbox(0, 0, 10, 10), sbox(20, 0, 30, 10), sbox(50, 50, 52, 52)]
    pred = [sbox(20, 0, 30, 5), sbox(0, 0, 10, 10), sbox(100, 100, 101, 101), sbox(0, 0, 10, 5)]
    r = miou_instances(pred, truth)
    # matches: pred1-truth0 IoU 1, pred0-truth1 IoU .5; truth2 missed; pred3 loses truth0 to pred1
    assert r["n_matched"] == 2 and r["n_missed_truth"] == 1 and r["n_unmatched_pred"] == 2
    assert r["miou_i"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert r["miou_p"] == pytest.approx((100 + 50 + 0) / (100 + 100 + 4))
    assert r["matched_miou_i"] == pytest.approx(0.75)
    assert sorted(r["pairs"]) == [(0, 1, 0.5), (1, 0, 1.0)]
    empty = miou_instances([], [])
    assert empty["miou_i"] is None and empty["n_truth"] == 0


def test_eval_masks_cli(tmp_path):
    import geopandas as gpd
    from click.testing import CliRunner

    from geors.cli.main import main

    truth = gpd.GeoDataFrame(geometry=[sbox(0, 0, 10, 10), sbox(20, 0, 30, 10)], crs="EPSG:32633")
    pred = gpd.GeoDataFrame(geometry=[sbox(0, 0, 10, 5), sbox(20, 0, 30, 10)], crs="EPSG:32633")
    truth.to_crs("EPSG:4326").to_file(tmp_path / "truth.geojson")
    pred.to_file(tmp_path / "pred.gpkg", layer="instances")
    res = CliRunner().invoke(main, ["eval", "masks", str(tmp_path / "pred.gpkg"), str(tmp_path / "truth.geojson")])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.output)
    assert out["miou_i"] == pytest.approx(0.75, abs=1e-6) and out["miou_p"] == pytest.approx(150 / 200, abs=1e-6)


def test_masks_cli_writes_instances_layer(disc_scene, tmp_path, no_sam_checkpoint):
    import geopandas as gpd
    import pyogrio
    from click.testing import CliRunner

    from geors.cli.main import main

    scene, truth = disc_scene
    t = transform()
    polys = [shapely.Polygon([t @ (x, y) for x, y in ((b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3]))])
             for b in disc_boxes()]
    gdf = gpd.GeoDataFrame({"kind": ["tank"] * len(polys)}, geometry=polys, crs=scene.crs).to_crs("EPSG:4326")
    gdf.to_file(tmp_path / "boxes.geojson")
    out = tmp_path / "out.gpkg"
    res = CliRunner().invoke(main, ["masks", str(scene.path), "--boxes", str(tmp_path / "boxes.geojson"),
                                    "-o", str(out), "--class-field", "kind", "--sam", "grabcut",
                                    "--tile", "256", "--overlap", "32", "--simplify", "0"])
    assert res.exit_code == 0, res.output
    assert "instances" in [n for n, _ in pyogrio.list_layers(out)]
    inst = gpd.read_file(out, layer="instances")
    assert len(inst) == len(DISCS) and set(inst["mask_method"]) == {"grabcut"} and set(inst["class"]) == {"tank"}
    assert inst.crs.to_epsg() == 32633
    truth_polys = [mask_to_geometry(m, t, simplify_px=0) for m in truth]
    r = miou_instances(list(inst.geometry), truth_polys)
    assert r["n_matched"] == len(DISCS) and r["miou_i"] > 0.8
    assert (inst["area_m2"] > 0).all()
