import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geors.errors import ConfigError
from geors.tiling import TileGrid, axis_core_bounds, axis_starts


class FakeScene:
    def __init__(self, w, h):
        self.width, self.height = w, h
        self.transform = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)
        self.crs = CRS.from_epsg(32617)


SIZES = [(640, 640), (1000, 700), (513, 389), (300, 200), (2049, 1537), (641, 1280), (5000, 3000)]


@pytest.mark.parametrize("w,h", SIZES)
@pytest.mark.parametrize("size,overlap", [(640, 128), (256, 64), (128, 0), (100, 37)])
def test_tiles_cover_every_pixel_and_cores_partition(w, h, size, overlap):
    grid = TileGrid(FakeScene(w, h), size, overlap)
    cover = np.zeros((h, w), np.int32)
    cores = np.zeros((h, w), np.int32)
    for t in grid:
        win, core = t.window, t.core
        assert win.col_off >= 0 and win.row_off >= 0
        assert win.col_off + win.width <= w and win.row_off + win.height <= h
        # full-size tiles whenever the scene is at least one tile wide/high
        assert win.width == min(size, w) and win.height == min(size, h)
        cover[win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width] += 1
        cores[core.row_off:core.row_off + core.height, core.col_off:core.col_off + core.width] += 1
        # core lies inside its tile
        assert win.col_off <= core.col_off and core.col_off + core.width <= win.col_off + win.width
        assert win.row_off <= core.row_off and core.row_off + core.height <= win.row_off + win.height
    assert cover.min() >= 1
    assert (cores == 1).all()


def test_core_keeps_half_overlap_margin():
    grid = TileGrid(FakeScene(2000, 2000), 640, 128)
    t = grid.tile(1, 1)
    ci = t.core_in_tile
    assert ci.col_off >= 64 and t.width - (ci.col_off + ci.width) >= 64


def test_owner_is_unique_and_consistent():
    grid = TileGrid(FakeScene(1500, 1100), 640, 128)
    rng = np.random.default_rng(0)
    for x, y in rng.uniform([0, 0], [1500, 1100], size=(300, 2)):
        owners = [t for t in grid if t.owns(x, y)]
        assert len(owners) == 1
        assert grid.owner(x, y).id == owners[0].id
        assert owners[0].owns_local(x - owners[0].col_off, y - owners[0].row_off)


def test_tile_ids_deterministic_and_transform():
    s = FakeScene(1500, 1100)
    a, b = list(TileGrid(s, 640, 128)), list(TileGrid(s, 640, 128))
    assert [t.id for t in a] == [t.id for t in b]
    assert len({t.id for t in a}) == len(a)
    t = a[-1]
    x, y = t.transform @ (0, 0)
    assert (x, y) == s.transform @ (t.col_off, t.row_off)


def test_pixel_world_roundtrip_of_a_box():
    s = FakeScene(1500, 1100)
    t = TileGrid(s, 640, 128).tile(1, 1)
    box = (10.0, 20.0, 50.0, 70.0)  # tile-local pixels
    x0, y0 = t.transform @ (box[0], box[1])
    x1, y1 = t.transform @ (box[2], box[3])
    back = ~s.transform @ (x0, y0), ~s.transform @ (x1, y1)
    assert np.allclose(back[0], (box[0] + t.col_off, box[1] + t.row_off))
    assert np.allclose(back[1], (box[2] + t.col_off, box[3] + t.row_off))


def test_axis_helpers():
    assert axis_starts(1000, 640, 512) == [0, 360]
    assert axis_starts(300, 640, 512) == [0]
    assert axis_core_bounds([0, 360], 1000, 640) == [(0, 500), (500, 1000)]


@pytest.mark.parametrize("size,overlap", [(0, 0), (640, 640), (640, -1), (640, 700), (10.5, 1)])
def test_bad_grid_options(size, overlap):
    with pytest.raises(ConfigError):
        TileGrid(FakeScene(100, 100), size, overlap)


@pytest.mark.parametrize("w,h", [(1000, 700), (641, 1280), (2049, 1537)])
def test_training_grid_is_the_inference_grid(w, h):
    """train/crops.grid_tiles cuts an image at the windows TileGrid reads: one rule, `axis_starts`."""
    from geors.train.crops import TrainTile, grid_tiles

    image = np.zeros((3, h, w), np.float32)
    tile = TrainTile(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), "img")
    origins = sorted(t.origin for t in grid_tiles([tile], 640, 128))
    assert origins == sorted((t.col_off, t.row_off) for t in TileGrid(FakeScene(w, h), 640, 128))


def test_c2fnet_windows_follow_axis_starts():
    """C2FNet's window statistic uses the tile rule: the last window flush with the end, none past it."""
    import torch

    from geors.models.c2fnet import window_counts

    mask = torch.zeros((1, 300, 250), dtype=torch.bool)
    mask[0, 299, 249] = True
    counts, ys, xs = window_counts(mask, 128, 48)
    assert ys == axis_starts(300, 128, 48) == [0, 48, 96, 144, 172]
    assert xs == axis_starts(250, 128, 48)
    assert int(counts[0, -1, -1]) == 1 and int(counts.sum()) == 1
