"""Weight-free mask engines: watershed beats the box, falls back honestly, and mask_method is per object."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from shapely.geometry import Polygon

from geors.evaluate.masks import miou_instances
from geors.masks import (
    FALLBACK,
    BoxEngine,
    GrabCutEngine,
    WatershedEngine,
    instances_for_tile,
    judge_mask,
    make_mask_engine,
    mask_to_geometry,
    rh_box,
)
from tests.mask_scenes import disc_image, write_disc_scene

DOTA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dota-P1888"


def _polys(crops):
    return [mask_to_geometry(c.mask, c.transform(Affine.identity()), 0.5) for c in crops]


def _truth_polys(masks):
    return [mask_to_geometry(m, Affine.identity(), 0) for m in masks]


def _boxes(masks):
    out = []
    for m in masks:
        r, c = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append([c[0], r[0], c[-1] + 1, r[-1] + 1])
    return np.array(out, float)


def rotated_rects(seed: int = 0):
    """Bright rotated rectangles (vehicles) on a textured dark ground, two of them side by side."""
    rng = np.random.default_rng(seed)
    h, w = 200, 300
    img = (80 + rng.normal(0, 10, (h, w, 3))).clip(0, 255)
    yy, xx = np.mgrid[:h, :w] + 0.5
    masks = []
    for cx, cy, length, width, deg in [(60, 60, 50, 18, 30), (150, 60, 40, 16, 90), (170.5, 60, 40, 16, 90),
                                       (240, 140, 60, 20, 135), (80, 150, 36, 14, 0)]:
        th = np.deg2rad(deg)
        u = ((xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)) / (length / 2)
        v = (-(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)) / (width / 2)
        m = (np.abs(u) <= 1) & (np.abs(v) <= 1)
        img[m] = (220 + rng.normal(0, 10, (int(m.sum()), 3))).clip(0, 255)
        masks.append(m)
    return img.astype(np.uint8), masks


@pytest.mark.parametrize("scene", ["discs", "rects"])
def test_watershed_beats_the_box(scene):
    if scene == "discs":
        img, masks = disc_image()
    else:
        img, masks = rotated_rects()
    boxes, truth = _boxes(masks), _truth_polys(masks)
    ws = WatershedEngine().predict_crops(img, boxes)
    box = BoxEngine().predict_crops(img, boxes)
    r_ws, r_box = miou_instances(_polys(ws), truth), miou_instances(_polys(box), truth)
    assert r_ws["miou_i"] > r_box["miou_i"] + 0.1 and r_ws["miou_p"] > r_box["miou_p"] + 0.1
    assert r_ws["miou_i"] > 0.9
    assert all(c.method == "watershed" for c in ws)
    assert all(0.5 <= c.score < 1.0 for c in ws)  # 0.5: a rectangle that fills its box


def test_watershed_falls_back_to_the_box_on_flat_and_noise_images():
    rng = np.random.default_rng(0)
    boxes = np.array([[20, 20, 60, 50], [70, 10, 90, 70]], float)
    for img in (np.full((100, 100, 3), 128, np.uint8), rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)):
        crops = WatershedEngine().predict_crops(img, boxes)
        ref = BoxEngine().predict_crops(img, boxes)
        for c, r in zip(crops, ref, strict=True):
            assert c.method == FALLBACK and c.score == 0.0
            assert (c.row_off, c.col_off) == (r.row_off, r.col_off) and (c.mask == r.mask).all()


def test_tiny_and_edge_boxes_fall_back():
    img, _ = disc_image()
    h, w = img.shape[:2]
    crops = WatershedEngine().predict_crops(img, np.array([[10, 10, 13, 30], [0, 0, w, h]], float))
    assert [c.method for c in crops] == [FALLBACK, FALLBACK]
    assert crops[1].mask.shape == (h, w) and crops[1].mask.all()


def test_judge_mask_rejects_implausible_masks():
    in_box = np.zeros((40, 40), bool)
    in_box[5:35, 5:35] = True
    grad = np.ones((40, 40), np.float32)
    speck = np.zeros_like(in_box)
    speck[18:22, 18:22] = True
    assert judge_mask(speck, in_box, grad).reason == "fill"
    stripe = np.zeros_like(in_box)
    stripe[5:35, 15:20] = True
    stripe[5:12, 5:35] = True  # fill ok, spans the box, but a T of thin bars
    j = judge_mask(stripe, in_box, grad)
    assert not j.ok
    half = np.zeros_like(in_box)
    half[5:35, 5:20] = True  # half the box: extent 0.5
    assert judge_mask(half, in_box, grad).reason == "extent"
    # a disc whose border lies on strong edges passes; on a flat gradient it fails the edge test
    yy, xx = np.mgrid[:40, :40] + 0.5
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2) & in_box
    assert judge_mask(disc, in_box, grad).reason == "edges"
    ring = disc ^ (((yy - 20) ** 2 + (xx - 20) ** 2) <= 13.5**2)
    g = np.where(ring, 10.0, 1.0).astype(np.float32)
    j = judge_mask(disc, in_box, g)
    assert j.ok and j.edge_score > 0.6 and j.compactness > 0.7


def test_grabcut_that_separates_nothing_is_a_fallback():
    img = np.full((80, 80, 3), 100, np.uint8)
    img[::2] = 140  # stripes everywhere: nothing to separate
    (c,) = GrabCutEngine().predict_crops(img, np.array([[20, 20, 60, 60]], float))
    assert c.method == FALLBACK and c.score == 0.0 and c.mask.all()


def test_box_engine_method_and_factory(caplog, monkeypatch, tmp_path):
    img, masks = disc_image()
    (c,) = BoxEngine().predict_crops(img, _boxes(masks[:1]))
    assert c.method == "box"
    monkeypatch.setenv("GEORS_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GEORS_SAM_CHECKPOINT", raising=False)
    import geors.masks.factory as factory

    monkeypatch.setattr(factory, "_told_no_sam", False)
    with caplog.at_level(logging.WARNING, logger="geors.masks.factory"):
        e1 = make_mask_engine("auto", batch_size=8)  # SAM options are ignored by the fallback
        e2 = make_mask_engine("auto")
    assert isinstance(e1, WatershedEngine) and isinstance(e2, WatershedEngine)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1  # said once
    assert "without SAM" in msgs[0] and "geors models download sam-vit_b" in msgs[0]
    assert "GEORS_SAM_CHECKPOINT" in msgs[0]
    assert isinstance(make_mask_engine("watershed", min_fill=0.5), WatershedEngine)


def test_instances_carry_each_objects_method(tmp_path):
    from geors.raster import open_scene
    from geors.results import Detection
    from geors.tiling import TileGrid

    path, _ = write_disc_scene(tmp_path / "discs.tif")
    scene = open_scene(path)
    tile = next(iter(TileGrid(scene, 512, 64)))
    # a disc (outlined) and a patch of plain background (implausible: the box is kept)
    boxes = [(70, 70, 130, 130), (400, 420, 440, 460)]
    dets = [Detection(None, "disc", 0, 0.9, box_px=b) for b in boxes]
    inst = instances_for_tile(scene, tile, scene.read_tile(tile), dets, WatershedEngine())
    assert [i.mask_method for i in inst] == ["watershed", FALLBACK]
    assert inst[1].mask_score == 0.0
    fallbacks = sum(i.mask_method == FALLBACK for i in inst)
    assert fallbacks == 1


@pytest.mark.skipif(not (DOTA / "P1888.png").exists(), reason="DOTA P1888 sample not available")
def test_watershed_beats_box_on_dota_vehicles():
    from PIL import Image

    img = np.asarray(Image.open(DOTA / "P1888.png").convert("RGB"))
    quads = [np.array(line.split()[:8], float).reshape(4, 2)
             for line in (DOTA / "P1888.txt").read_text().splitlines()[2:] if len(line.split()) >= 9]
    boxes = np.array([rh_box(q) for q in quads])
    truth = [Polygon(q) for q in quads]
    ws = miou_instances(_polys(WatershedEngine().predict_crops(img, boxes)), truth)
    box = miou_instances(_polys(BoxEngine().predict_crops(img, boxes)), truth)
    assert ws["miou_i"] > box["miou_i"] + 0.03 and ws["miou_p"] > box["miou_p"] + 0.03


def test_convex_option_gives_hulls_of_accepted_masks():
    img, masks = rotated_rects()
    boxes = _boxes(masks)
    raw = WatershedEngine().predict_crops(img, boxes)
    hull = WatershedEngine(convex=True).predict_crops(img, boxes)
    for r, c in zip(raw, hull, strict=True):
        assert c.method == r.method and (c.row_off, c.col_off) == (r.row_off, r.col_off)
        assert (c.mask >= r.mask).all()  # the hull contains the mask
