import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geors.errors import BandError, GeoreferenceError, SceneReadError
from geors.raster import open_scene
from geors.tiling import TileGrid

import scenes


def test_rgb_uint8_tiles_read_like_rasterio(tmp_path):
    p = scenes.rgb_uint8(tmp_path / "rgb.tif")
    sc = open_scene(p)
    assert (sc.width, sc.height, sc.band_indexes, sc.dtype) == (1000, 700, (1, 2, 3), "uint8")
    st = sc.stats
    with rasterio.open(p) as ds:
        raw = ds.read(window=Window(360, 60, 640, 640))
    t = TileGrid(sc, 640, 128).tile(1, 1)
    assert (t.col_off, t.row_off) == (360, 60)
    img = sc.read_tile(t)
    assert img.image.shape == (3, 640, 640) and img.image.dtype == np.float32
    expect = np.clip((raw.astype(np.float32) - np.array(st.low)[:, None, None]) /
                     (np.array(st.high) - np.array(st.low))[:, None, None], 0, 1)
    assert np.allclose(img.image, expect, atol=1e-6)
    assert img.valid.all()


def test_stretch_is_scene_wide_not_per_tile(tmp_path):
    data = np.zeros((3, 600, 1200), np.uint16)
    data[:, :, :600] = 1000   # dark half
    data[:, :, 600:] = 3000   # bright half
    data[:, ::50, ::50] = 5000
    p = scenes.write(tmp_path / "halves.tif", data, CRS.from_epsg(32633), Affine(1, 0, 0, 0, -1, 0))
    sc = open_scene(p)
    grid = TileGrid(sc, 512, 0)
    left, right = sc.read_tile(grid.tile(0, 0)), sc.read_tile(grid.tile(0, 2))
    # per-tile stretching would make both halves look alike; scene-wide keeps them apart
    assert np.median(right.image) > np.median(left.image) + 0.3


def test_single_band_uint16_replicated_to_three(tmp_path):
    sc = open_scene(scenes.uint16_single(tmp_path / "u16.tif"))
    assert sc.band_indexes == (1,) and sc.channels == 3
    img = sc.read_tile(TileGrid(sc, 640, 128)[0])
    assert img.image.shape[0] == 3 and np.array_equal(img.image[0], img.image[2])
    assert 0 <= img.image.min() and img.image.max() <= 1


def test_int16_custom_wkt(tmp_path):
    sc = open_scene(scenes.int16_albers(tmp_path / "albers.tif"))
    assert sc.crs.to_epsg() is None and sc.crs_name == "Custom Albers (custom WKT)"
    assert sc.dtype == "int16"
    grid = TileGrid(sc, 256, 64)
    assert all(sc.read_tile(t).image.shape == (3, 256, 256) for t in grid)


def test_nodata_becomes_valid_mask_and_empty_tiles(tmp_path):
    sc = open_scene(scenes.nodata_border(tmp_path / "nd.tif"))
    grid = TileGrid(sc, 256, 0)
    corner = sc.read_tile(grid.tile(0, 0))
    assert not corner.valid.any() and corner.image.max() == 0
    inner = sc.read_tile(grid.tile(2, 2))
    assert inner.valid.all()
    part = sc.read_tile(grid.tile(1, 1))
    assert 0 < part.valid.mean() < 1
    assert not part.valid[:300 - 256, :].any()


def test_internal_mask(tmp_path):
    data = np.full((3, 300, 300), 100, np.uint8)
    p = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(p, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8",
                           crs="EPSG:32617", transform=Affine(1, 0, 0, 0, -1, 0)) as ds:
            ds.write(data)
            m = np.full((300, 300), 255, np.uint8)
            m[:, :100] = 0
            ds.write_mask(m)
    img = open_scene(p).read_window(Window(0, 0, 300, 300))
    assert not img.valid[:, :100].any() and img.valid[:, 100:].all()


def test_scene_smaller_than_tile_is_padded(tmp_path):
    sc = open_scene(scenes.small_scene(tmp_path / "small.tif"))
    grid = TileGrid(sc, 640, 128)
    assert len(grid) == 1
    img = sc.read_tile(grid[0])
    assert img.image.shape == (3, 640, 640)
    assert img.valid[:200, :300].all() and not img.valid[200:, :].any() and not img.valid[:, 300:].any()


def test_band_selection_and_out_of_range(tmp_path):
    data = np.stack([np.full((50, 60), v, np.uint8) for v in (10, 20, 30, 40)])
    p = scenes.write(tmp_path / "four.tif", data, CRS.from_epsg(32617), Affine(1, 0, 0, 0, -1, 0))
    sc = open_scene(p, bands=[4, 3, 2])
    assert sc.band_indexes == (4, 3, 2)
    assert open_scene(p).band_indexes == (1, 2, 3)
    with pytest.raises(BandError, match=r"four.tif.*band index 5.*4 band"):
        open_scene(p, bands=[5, 1, 2])


def test_lazy_dask_view(tmp_path):
    sc = open_scene(scenes.rgb_uint8(tmp_path / "rgb.tif"))
    da = sc.data
    assert da.chunks is not None and da.shape == (3, 700, 1000)
    assert int(da[:, 100, 200].compute()[0]) == 250


@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated", "nocrs", "rotated", "gcps", "dir"])
def test_bad_inputs_name_the_file(tmp_path, case):
    p = tmp_path / f"{case}.tif"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("this is not a raster\n")
    elif case == "truncated":
        src = scenes.write(tmp_path / "full.tif", np.random.default_rng(0).integers(0, 255, (3, 512, 512),
                           dtype=np.uint8), CRS.from_epsg(32617), Affine(1, 0, 0, 0, -1, 0), tiled=True)
        blob = src.read_bytes()
        p.write_bytes(blob[: len(blob) * 2 // 3])
    elif case == "nocrs":
        scenes.write(p, np.zeros((3, 20, 20), np.uint8), None, Affine(1, 0, 0, 0, -1, 0))
    elif case == "rotated":
        scenes.write(p, np.zeros((3, 20, 20), np.uint8), CRS.from_epsg(32617), Affine(1, 0.2, 0, 0.1, -1, 0))
    elif case == "gcps":
        from rasterio.control import GroundControlPoint as G
        gcps = [G(0, 0, 10, 50), G(0, 20, 11, 50), G(20, 0, 10, 49)]
        with rasterio.open(p, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8",
                           gcps=gcps, crs="EPSG:4326") as ds:
            ds.write(np.zeros((1, 20, 20), np.uint8))
    elif case == "dir":
        p.mkdir()
    expected = {"missing": SceneReadError, "empty": SceneReadError, "text": SceneReadError,
                "truncated": SceneReadError, "nocrs": GeoreferenceError, "rotated": GeoreferenceError,
                "gcps": GeoreferenceError, "dir": SceneReadError}[case]
    with pytest.raises(expected) as ei:
        sc = open_scene(p)
        for t in TileGrid(sc, 128, 0):  # truncated files fail on read, naming the window
            sc.read_tile(t)
    assert str(p) in str(ei.value)
    if case == "truncated":
        assert "window col_off=" in str(ei.value)
    if case in ("rotated", "gcps"):
        assert "gdalwarp" in str(ei.value)


def test_overviews_feed_the_stretch_and_vrt_reads(tmp_path):
    from rasterio.enums import Resampling
    rng = np.random.default_rng(5)
    data = rng.integers(0, 200, size=(3, 1200, 1100), dtype=np.uint8)
    p = scenes.write(tmp_path / "cog.tif", data, CRS.from_epsg(32617), Affine(1, 0, 0, 0, -1, 0), tiled=True)
    with rasterio.open(p, "r+") as ds:
        ds.build_overviews([2], Resampling.nearest)
    sc = open_scene(p)
    assert sc.stats.source == "overview 1/2"
    assert sc.stats.low[0] == pytest.approx(np.percentile(data[0], 2), abs=3)
    vrt = tmp_path / "mosaic.vrt"
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">cog.tif'
        f'</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>' for b in (1, 2, 3))
    vrt.write_text(f'<VRTDataset rasterXSize="1100" rasterYSize="1200"><SRS>EPSG:32617</SRS>'
                   f'<GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform>{bands}</VRTDataset>')
    v = open_scene(vrt)
    t = TileGrid(v, 640, 128).tile(1, 1)
    raw = v.read_raw(t.window)
    assert np.array_equal(raw, data[:, t.row_off:t.row_off + 640, t.col_off:t.col_off + 640])


def test_sample_offline_fails_clearly(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from geors.cli.main import main
    monkeypatch.setenv("GEORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    res = CliRunner().invoke(main, ["sample", "neon"])
    assert res.exit_code == 2
    assert "could not download the NEON sample" in res.output and "deepforest" in res.output


def test_crs_text_is_one_rule_for_people(tmp_path):
    """geors info, messages and previews name a CRS one way: EPSG code, else its name marked custom."""
    from rasterio.crs import CRS

    from geors.crs import crs_text

    sc = open_scene(scenes.int16_albers(tmp_path / "albers.tif"))
    assert crs_text(sc.crs) == sc.crs_name == "Custom Albers (custom WKT)"
    assert crs_text(CRS.from_epsg(32617)) == crs_text("EPSG:32617") == "EPSG:32617"
    assert crs_text(None) == "no CRS"
