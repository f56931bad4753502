"""geors preview: a scene read decimated, layers in class colours, legend, scale bar, north arrow."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from PIL import Image
from shapely.geometry import Point, box

from geors.errors import ConfigError
from geors.preview import class_colour, render_preview
from tests.mask_scenes import CRS_UTM, DISCS, ORIGIN, PIXEL, write_disc_scene


def _world(cx, cy):
    return ORIGIN[0] + cx * PIXEL, ORIGIN[1] - cy * PIXEL


@pytest.fixture
def scene_and_layers(tmp_path):
    scene, _ = write_disc_scene(tmp_path / "discs.tif")  # 900 x 600 px
    gpkg = tmp_path / "out.gpkg"
    dets, inst = [], []
    for cx, cy, r in DISCS[:4]:
        x, y = _world(cx, cy)
        dets.append(box(x - r * PIXEL, y - r * PIXEL, x + r * PIXEL, y + r * PIXEL))
        inst.append(Point(x, y).buffer(r * PIXEL * 0.9))
    classes = ["tree", "car", "tree", "car"]
    gpd.GeoDataFrame({"class": classes}, geometry=dets, crs=CRS_UTM).to_file(gpkg, layer="detections")
    gpd.GeoDataFrame({"class": classes}, geometry=inst, crs=CRS_UTM).to_file(gpkg, layer="instances")
    x0, y0 = _world(600, 400)
    seg = [box(x0, y0 - 40, x0 + 80, y0)]
    gpd.GeoDataFrame({"class": ["water"]}, geometry=seg, crs=CRS_UTM).to_file(gpkg, layer="segmentation")
    return scene, gpkg


def test_preview_draws_layers_in_class_colours(scene_and_layers, tmp_path):
    scene, gpkg = scene_and_layers
    out = tmp_path / "p.png"
    res = render_preview(scene, gpkg, out, max_size=900)
    assert res.features == {"segmentation": 1, "instances": 4, "detections": 4}
    assert set(res.classes) == {"car", "tree", "water"}
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] == 900 and img.shape[0] > 600  # map + footer
    assert res.width == 900 and res.height == 600 and res.decimation == 1.0
    # the centre of an instance is its class colour blended at 40 % over the scene
    render_preview(scene, None, tmp_path / "plain.png", max_size=900)
    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB")).astype(float)
    cx, cy, _ = DISCS[1]  # "car"
    colour = np.array(res.classes["car"], float)
    np.testing.assert_allclose(img[cy, cx], 0.4 * colour + 0.6 * plain[cy, cx], atol=2)
    # a detection's outline pixel carries its class colour exactly
    c2x, c2y, r2 = DISCS[2]  # "tree", box edge at x = cx - r
    edge = img[c2y - 3 : c2y + 3, c2x - r2 - 1 : c2x - r2 + 1].reshape(-1, 3)
    assert any(np.abs(p.astype(int) - res.classes["tree"]).max() <= 30 for p in edge)
    # segmentation filled
    sx, sy = 640, 420
    assert img[sy, sx].tolist() != [200, 200, 200]
    assert res.classes["water"] in [class_colour(i) for i in range(3)]


def test_preview_decimates_and_crops(scene_and_layers, tmp_path):
    scene, gpkg = scene_and_layers
    res = render_preview(scene, gpkg, tmp_path / "small.png", max_size=300, min_size=0)
    assert (res.width, res.height) == (300, 200) and res.decimation == pytest.approx(3.0)
    x0, y1 = _world(0, 0)
    x1, y0 = _world(300, 300)
    res = render_preview(scene, gpkg, tmp_path / "bbox.png", bbox=(x0, y0, x1, y1), min_size=0)
    assert (res.width, res.height) == (300, 300)
    assert res.features["instances"] == 2  # DISCS 0 and 1 intersect the bbox
    res = render_preview(scene, None, tmp_path / "plain.png", bbox=(x0, y0, x1, y1))
    assert res.features == {} and (res.width, res.height) == (600, 600)  # small: enlarged 2x
    with pytest.raises(ConfigError):
        render_preview(scene, gpkg, tmp_path / "x.png", bbox=(0, 0, 1, 1))
    with pytest.raises(ConfigError):
        render_preview(scene, gpkg, tmp_path / "x.png", layers=["nope"])


def test_preview_uses_overviews_of_a_large_scene(tmp_path, monkeypatch):
    # 4096^2 single-band scene with overviews: the preview reads a decimated array, never the scene
    path = tmp_path / "big.tif"
    prof = dict(driver="GTiff", width=4096, height=4096, count=1, dtype="uint8", crs="EPSG:32617",
                transform=Affine(0.5, 0, 400000, 0, -0.5, 3300000), tiled=True, blockxsize=512, blockysize=512,
                compress="deflate")
    with rasterio.open(path, "w", **prof) as dst:
        x = (np.arange(4096) // 16 % 256).astype(np.uint8)
        for r in range(0, 4096, 512):
            dst.write(np.broadcast_to(x, (512, 4096))[None], window=rasterio.windows.Window(0, r, 4096, 512))
        dst.build_overviews([2, 4, 8, 16])
    reads = []
    real_open = rasterio.open

    class Spy:
        def __init__(self, ds):
            self.ds = ds

        def __getattr__(self, name):
            return getattr(self.ds, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.ds.__exit__(*exc)

        def read(self, *a, **k):
            reads.append(k.get("out_shape"))
            return self.ds.read(*a, **k)

    monkeypatch.setattr(rasterio, "open", lambda *a, **k: Spy(real_open(*a, **k)))
    res = render_preview(path, None, tmp_path / "big.png", max_size=256)
    monkeypatch.undo()
    assert (res.width, res.height) == (256, 256) and res.decimation == 16
    assert reads == [(1, 256, 256)]
    img = np.asarray(Image.open(tmp_path / "big.png").convert("L"))
    assert img[:256].std() > 20  # the gradient is there, stretched


def test_preview_cli(scene_and_layers, tmp_path):
    from geors.cli.preview import command

    scene, gpkg = scene_and_layers
    out = tmp_path / "cli.png"
    r = CliRunner().invoke(command, [str(scene), str(gpkg), "-o", str(out), "--layer", "instances",
                                     "--max-size", "450"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["features"] == {"instances": 4} and d["width"] == 450 and out.exists()
    r = CliRunner().invoke(command, [str(scene), str(gpkg), "-o", str(out), "--bbox", "1,2,3"])
    assert r.exit_code == 2


def test_preview_reprojects_layers(scene_and_layers, tmp_path):
    scene, gpkg = scene_and_layers
    wgs = tmp_path / "wgs.gpkg"
    gpd.read_file(gpkg, layer="instances").to_crs(4326).to_file(wgs, layer="instances")
    a = render_preview(scene, gpkg, tmp_path / "a.png", layers=["instances"], max_size=900)
    b = render_preview(scene, wgs, tmp_path / "b.png", layers=["instances"], max_size=900)
    assert b.features == {"instances": 4}
    ia = np.asarray(Image.open(tmp_path / "a.png").convert("RGB")).astype(int)
    ib = np.asarray(Image.open(tmp_path / "b.png").convert("RGB")).astype(int)
    assert np.abs(ia - ib).max(axis=-1).mean() < 1.0  # the same picture up to sub-pixel edges
    assert a.classes == b.classes
