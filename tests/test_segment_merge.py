"""Segmentation seams: core clipping, polygonising, dissolve across cores (geors.merge)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine

from geors.merge import dissolve_across_cores, dissolve_groups, merge_geometries, segment_polygons
from geors.results import SegmentPolygon
from geors.tiling import TileGrid


class _Scene:
    def __init__(self, width, height, transform, crs=None):
        self.width, self.height, self.transform, self.crs = width, height, transform, crs


class _Img:
    def __init__(self, valid):
        self.valid = valid


def _truth(h: int, w: int) -> np.ndarray:
    """A blob of class 1 spreading over many tiles (with a hole), a small class-2 object, 255 elsewhere."""
    yy, xx = np.mgrid[0:h, 0:w]
    lab = np.full((h, w), 255, np.uint8)
    lab[(yy - 150) ** 2 / 90 ** 2 + (xx - 140) ** 2 / 120 ** 2 <= 1] = 1
    lab[140:160, 130:150] = 0  # a hole of another class inside the blob, on a core boundary
    lab[20:30, 250:262] = 2
    lab[200:290, 10:14] = 1  # a thin strip, separate from the blob
    return lab


def _run(lab: np.ndarray, transform: Affine, size: int = 96, overlap: int = 32, tolerance: float = 0.0):
    h, w = lab.shape
    grid = TileGrid(_Scene(w, h, transform), size, overlap)
    polys: list[SegmentPolygon] = []
    for tile in grid:
        win = tile.window
        cr = lab[int(win.row_off):int(win.row_off + win.height), int(win.col_off):int(win.col_off + win.width)]
        polys += segment_polygons(tile, _Img(np.ones(cr.shape, bool)), cr, ["a", "b", "c"], scene_shape=(h, w))
    return grid, polys, dissolve_across_cores(polys, tolerance)


def _regions(lab: np.ndarray, cid: int) -> list[int]:
    """Pixel counts of the 4-connected regions of class ``cid`` (the rasterised truth)."""
    from rasterio.features import shapes

    return sorted(int(shapely.geometry.shape(g).area) for g, v in shapes(lab, mask=lab == cid, connectivity=4))


def test_seam_region_crossing_tiles_is_one_feature_with_the_truth_area():
    lab = _truth(300, 280)
    grid, polys, merged = _run(lab, Affine.identity())
    assert len(grid) > 9
    blob_pieces = [p for p in polys if p.class_id == 1]
    assert len(blob_pieces) > 4  # the blob is cut by core boundaries
    for cid in (0, 1, 2):
        got = sorted(round(p.geometry.area) for p in merged if p.class_id == cid)
        assert got == _regions(lab, cid), cid
    blob = max((p for p in merged if p.class_id == 1), key=lambda p: p.geometry.area)
    assert blob.geometry.geom_type == "Polygon"
    assert len(blob.geometry.interiors) == 1  # the hole survives the merge


def test_seam_in_a_real_crs_with_float_transform():
    # a UTM-like origin and a non-representable pixel size: shared edges differ in the last bits
    t = Affine(0.1 * 1.0000001, 0, 528123.37, 0, -0.1 * 1.0000001, 4978456.91)
    lab = _truth(300, 280)
    _, _, merged = _run(lab, t, size=128, overlap=48, tolerance=1e-4)
    px = abs(t.a * t.e)
    for cid in (1, 2):
        got = sorted(p.geometry.area / px for p in merged if p.class_id == cid)
        want = _regions(lab, cid)
        assert len(got) == len(want)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_segment_polygons_core_only_valid_only_and_edge_flags():
    lab = np.zeros((300, 280), np.uint8)
    grid = TileGrid(_Scene(280, 300, Affine.identity()), 96, 32)
    tile = grid.tile(1, 1)
    win = tile.window
    cr = lab[int(win.row_off):int(win.row_off + win.height), int(win.col_off):int(win.col_off + win.width)].copy()
    cr[:5, :] = 255  # outside the core anyway
    valid = np.ones(cr.shape, bool)
    core = tile.core_in_tile
    valid[int(core.row_off):int(core.row_off) + 4, :] = False  # invalid band inside the core
    polys = segment_polygons(tile, _Img(valid), cr, ["a"], scene_shape=(300, 280))
    assert len(polys) == 1 and polys[0].edge and polys[0].class_name == "a"
    assert polys[0].geometry.area == core.width * (core.height - 4)
    minx, miny, maxx, maxy = polys[0].geometry.bounds
    assert (minx, miny + 0, maxx) == (tile.core.col_off, tile.core.row_off + 4, tile.core.col_off + core.width)
    # a region away from the core edges is not an edge candidate
    cr2 = np.full(cr.shape, 255, np.uint8)
    cr2[int(core.row_off) + 10:int(core.row_off) + 20, int(core.col_off) + 10:int(core.col_off) + 20] = 0
    (p,) = segment_polygons(tile, None, cr2, ["a"])
    assert not p.edge and p.geometry.area == 100
    assert segment_polygons(tile, None, np.full(cr.shape, 255, np.uint8), ["a"]) == []


def test_scene_border_is_not_an_inner_edge():
    grid = TileGrid(_Scene(100, 100, Affine.identity()), 128, 32)  # one tile = the scene
    (tile,) = list(grid)
    (p,) = segment_polygons(tile, None, np.zeros((100, 100), np.uint8), ["a"], scene_shape=(100, 100))
    assert not p.edge


def test_dissolve_groups_rules():
    sq = lambda x0, y0, s=10: shapely.box(x0, y0, x0 + s, y0 + s)  # noqa: E731
    feats = [
        (1, 0, sq(0, 0), True), (2, 0, sq(10, 0), True),    # share an edge -> merged
        (3, 0, sq(-10, 10), True),                         # corner contact with 1 only -> not merged
        (4, 1, sq(10, 10), True),                          # other class beside 2 -> not merged
        (5, 0, sq(20, 0), True), (6, 0, sq(30, 0), False),  # 5 joins 2; 6 is not an edge candidate
        (7, 0, sq(100, 100), True),
    ]
    assert dissolve_groups(feats) == [[1, 2, 5]]
    assert dissolve_groups([]) == []
    assert dissolve_groups(feats[:1]) == []


def test_merge_geometries_closes_seams_on_the_grid():
    a = shapely.box(0, 0, 1.0000000001, 1)
    b = shapely.box(1, 0, 2, 1)
    m = merge_geometries([a, b], tolerance=1e-6)
    assert m.geom_type == "Polygon" and m.area == pytest.approx(2.0)
