"""C2FNet segmentation: model functions, stage, class raster writer, training, evaluation, CLI, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from click.testing import CliRunner

from geors.cli.main import main
from geors.models.c2fnet import (
    C2FNet,
    C2FNetConfig,
    aggregate_paper,
    aggregate_reference,
    select_windows,
    window_counts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CRS = "EPSG:32633"
T = Affine(0.5, 0, 400000.0, 0, -0.5, 5000000.0)
CLASSES = ["ground", "roof", "car"]


def _scene_arrays(h: int = 160, w: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = (rng.random((3, h, w)) * 40 + 60).astype(np.uint8)
    lab = np.zeros((h, w), np.uint8)
    lab[20:70, 30:90] = 1
    img[:, 20:70, 30:90] = 180
    for y, x in ((100, 40), (110, 150), (130, 90), (30, 150)):
        lab[y:y + 4, x:x + 8] = 2
        img[0, y:y + 4, x:x + 8] = 250
        img[1:, y:y + 4, x:x + 8] = 20
    lab[150:, :] = 255  # unlabelled strip
    return img, lab


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    img, lab = _scene_arrays()
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=img.shape[2], height=img.shape[1], count=3, dtype="uint8",
                       crs=CRS, transform=T) as dst:
        dst.write(img)
    labels = tmp_path / "labels.tif"
    with rasterio.open(labels, "w", driver="GTiff", width=lab.shape[1], height=lab.shape[0], count=1, dtype="uint8",
                       crs=CRS, transform=T, nodata=255) as dst:
        dst.write(lab, 1)
        dst.update_tags(geors_classes=json.dumps({n: i for i, n in enumerate(CLASSES)}))
    return {"scene": scene, "labels": labels, "dir": tmp_path}


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    from geors.models.registry import save_model

    torch.manual_seed(0)
    model = C2FNet(C2FNetConfig(num_classes=3, small_classes=(2,), window=32, window_stride=16, top_n=4))
    return save_model(model.eval(), {"architecture": "c2fnet", "classes": CLASSES, "bands": 3, "tile_size": 96,
                                     "overlap": 32, "colours": [[0, 0, 0], [200, 0, 0], [0, 0, 255]],
                                     "small_classes": ["car"]}, tmp_path / "tiny.safetensors")


# ----------------------------------------------------------------------------- model functions
def test_window_counts_and_top_n():
    m = torch.zeros(1, 100, 90, dtype=torch.bool)
    m[0, 10:14, 10:14] = True  # 16 px
    m[0, 80:82, 70:75] = True  # 10 px
    counts, ys, xs = window_counts(m, 32, 16)
    assert ys[-1] == 100 - 32 and xs[-1] == 90 - 32  # last windows flush with the border
    assert int(counts.max()) == 16
    wins = select_windows(m, 32, 16, top_n=3)[0]
    assert len(wins) == 3 and all(k == 32 for _, _, k in wins)
    y, x, _ = wins[0]
    assert y <= 10 and y + 32 >= 14 and x <= 10 and x + 32 >= 14
    # non-overlapping, uncapped (reference variant): every window with a small pixel
    ref = select_windows(m, 32, 32, top_n=None)[0]
    assert sorted(ref) == [(0, 0, 32), (64, 58, 32), (68, 58, 32)]  # the last row of windows is flush with the border
    assert select_windows(torch.zeros(1, 50, 50, dtype=torch.bool), 32, 16, 5) == [[]]
    # a tile smaller than k: one window of the tile's size
    assert select_windows(torch.ones(1, 20, 20, dtype=torch.bool), 32, 16, 5)[0] == [(0, 0, 20)]


def test_aggregation_eq1_both_cases():
    # 3 classes, class 2 small; pixel 0: coarse says small, fine says no; pixel 1: coarse other, fine yes
    pc = torch.tensor([[0.3, 0.1, 0.6], [0.7, 0.1, 0.2], [0.1, 0.8, 0.1]]).T.reshape(1, 3, 1, 3)
    pf = torch.tensor([[[0.2, 0.9, 0.9]]])
    refined = torch.tensor([[[True, True, False]]])
    out = aggregate_paper(pc, pf, refined, [2]).argmax(1)[0, 0].tolist()
    assert out == [0, 2, 1]  # flipped to best other, flipped to small, unrefined pixel unchanged
    # p_f on the right side of 0.5 keeps the coarse decision
    keep = aggregate_paper(pc, torch.tensor([[[0.9, 0.1, 0.5]]]), refined, [2]).argmax(1)[0, 0].tolist()
    assert keep == [2, 0, 1]
    # reference rule adds p_f to small-class logits only
    logits = torch.log(pc)
    ref = aggregate_reference(logits, pf, refined, [2])
    assert torch.allclose(ref[..., 2], logits.softmax(1)[..., 2])
    assert ref[0, 2, 0, 1] > logits.softmax(1)[0, 2, 0, 1]


@pytest.mark.parametrize("aggregation,zoom", [("paper", 1), ("reference", 2)])
def test_c2fnet_forward_shapes(aggregation, zoom):
    torch.manual_seed(0)
    m = C2FNet(C2FNetConfig(num_classes=4, small_classes=(2, 3), window=32, window_stride=16, top_n=3,
                            zoom=zoom, aggregation=aggregation)).eval()
    with torch.inference_mode():
        p = m(torch.rand(2, 3, 70, 90))
        c = m(torch.rand(1, 3, 70, 90), refine=False)
    assert p.shape == (2, 4, 70, 90) and c.shape == (1, 4, 70, 90)
    assert torch.allclose(p.sum(1), torch.ones(2, 70, 90), atol=1e-5)
    cfg = C2FNetConfig.from_dict(json.loads(json.dumps(m.config.to_dict())))
    assert cfg == m.config


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        C2FNetConfig(num_classes=2, small_classes=(5,))
    with pytest.raises(ValueError):
        C2FNetConfig(aggregation="other")


# ----------------------------------------------------------------------------- stage and writer
def test_stage_class_raster_and_raster_writer(data, tiny_model):
    from geors.merge import segment_polygons
    from geors.raster import open_scene
    from geors.segment import ClassRasterWriter, SegmentStage
    from geors.tiling import TileGrid

    sc = open_scene(data["scene"])
    stage = SegmentStage(str(tiny_model), device="cpu")
    stage.check_scene(sc)
    info = stage.describe()
    assert info["segmenter_classes"] == CLASSES and len(info["segmenter_sha256"]) == 64
    assert stage.default_tiling() == (96, 32)
    grid = TileGrid(sc, 96, 32)
    tiles = list(grid)
    images = [sc.read_tile(t) for t in tiles]
    results = stage(sc, tiles, images)
    assert [r.tile_id for r in results] == [t.id for t in tiles]
    assert all(r.class_raster.dtype == np.uint8 and r.class_raster.shape == (t.height, t.width)
               for r, t in zip(results, tiles, strict=True))
    assert all(not r.segmentation for r in results)  # the stage never polygonises
    out = data["dir"] / "classes.tif"
    with ClassRasterWriter(out, sc, CLASSES, stage.colours) as w:
        for t, r in zip(tiles, results, strict=True):
            w.write(t, r.class_raster)
    with rasterio.open(out) as ds:
        full = ds.read(1)
        assert ds.crs == sc.crs and ds.transform == sc.transform and ds.compression.name == "deflate"
        assert ds.is_tiled and json.loads(ds.tags()["geors_classes"]) == {n: i for i, n in enumerate(CLASSES)}
        assert ds.colormap(1)[2][:3] == (0, 0, 255)
    # the raster equals the cores of the tile class rasters, and the polygons cover the same pixels
    area = 0.0
    for t, r, img in zip(tiles, results, images, strict=True):
        c = t.core
        core = t.core_in_tile
        np.testing.assert_array_equal(
            full[c.row_off:c.row_off + c.height, c.col_off:c.col_off + c.width],
            r.class_raster[core.row_off:core.row_off + core.height, core.col_off:core.col_off + core.width])
        area += sum(p.geometry.area for p in segment_polygons(t, img, r.class_raster, CLASSES))
    assert area == pytest.approx(sc.width * sc.height * 0.25)


def test_raster_writer_is_atomic(data):
    from geors.raster import open_scene
    from geors.segment import ClassRasterWriter

    sc = open_scene(data["scene"])
    out = data["dir"] / "c.tif"
    w = ClassRasterWriter(out, sc, CLASSES)
    assert not out.exists()
    w.abort()
    assert not out.exists() and not list(data["dir"].glob(".c.tif*"))


def test_background_class_is_no_class(data, tmp_path):
    from geors.models.registry import save_model
    from geors.raster import open_scene
    from geors.segment import SegmentStage
    from geors.tiling import TileGrid

    torch.manual_seed(0)
    m = C2FNet(C2FNetConfig(num_classes=3, small_classes=(2,)))
    with torch.no_grad():
        m.coarse.classifier.bias[:] = torch.tensor([50.0, 0.0, 0.0])  # predicts class 0 everywhere
    path = save_model(m.eval(), {"architecture": "c2fnet", "classes": CLASSES, "bands": 3, "tile_size": 96,
                                 "background": "ground"}, tmp_path / "bg.safetensors")
    sc = open_scene(data["scene"])
    tile = TileGrid(sc, 96, 32)[0]
    img = sc.read_tile(tile)
    (r,) = SegmentStage(str(path), device="cpu")(sc, [tile], [img])
    assert (r.class_raster == 255).all()
    (k,) = SegmentStage(str(path), device="cpu", keep_background=True)(sc, [tile], [img])
    assert (k.class_raster == 0).all()


def test_stage_pickles_without_weights(tiny_model):
    import pickle

    from geors.segment import SegmentStage

    st = SegmentStage(str(tiny_model), device="cpu")
    _ = st.segmenter
    st2 = pickle.loads(pickle.dumps(st))
    assert st2._seg is None and st2.classes == tuple(CLASSES)


# ----------------------------------------------------------------------------- end to end: seams in the GeoPackage
def test_segment_scenes_dissolves_across_cores(data, tiny_model, monkeypatch):
    """A 'perfect' segmenter (the truth) through the whole loop: one feature per truth region, truth areas."""
    import pyogrio
    from rasterio.features import shapes

    import geors.segment as seg
    from geors.results import TileResult

    _, truth = _scene_arrays()
    truth = truth.copy()
    truth[truth == 255] = 0

    class Perfect(seg.SegmentStage):
        def __call__(self, batch):
            return [TileResult(batch.scene.name, t.id, t.window, "done", class_raster=truth[
                t.row_off:t.row_off + t.height, t.col_off:t.col_off + t.width].copy()) for t in batch.tiles]

    monkeypatch.setattr(seg, "SegmentStage", Perfect)
    from geors import PipelineConfig, SegmentConfig, TilingConfig
    from geors.pipeline import run

    out = data["dir"] / "out.gpkg"
    config = PipelineConfig(detect=None, tiling=TilingConfig(64, 16),
                            segment=SegmentConfig(segmenter=str(tiny_model), raster_out=str(data["dir"] / "cls.tif")))
    summary = run([data["scene"]], out, config)  # the production path: the pipeline clips, polygonises, dissolves
    assert summary.tiles > 9 and summary.failed == 0
    df = pyogrio.read_dataframe(out, layer="segmentation")
    for cid in (0, 1, 2):
        want = sorted(shapely.geometry.shape(g).area * 0.25 for g, _ in
                      shapes(truth, mask=truth == cid, connectivity=4))
        got = sorted(df[df["class_id"] == cid].geometry.area)
        np.testing.assert_allclose(got, want, rtol=1e-9)
    with rasterio.open(data["dir"] / "cls.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), truth)


# ----------------------------------------------------------------------------- training
def test_train_segmenter_cli_writes_model_with_metadata(data):
    from geors.models.registry import load_model

    out = data["dir"] / "m.safetensors"
    r = CliRunner().invoke(main, ["train", "segmenter", "--scene", str(data["scene"]), "--labels", str(data["labels"]),
                                  "--small-classes", "car", "-o", str(out), "--coarse-steps", "3", "--fine-steps", "2",
                                  "--crop", "64", "--window", "32", "--batch-size", "2", "--device", "cpu",
                                  "--max-minutes", "0"])
    assert r.exit_code == 0, r.output
    assert "loss" in r.output and "eta" in r.output
    model, meta = load_model(out)
    assert meta["architecture"] == "c2fnet" and meta["classes"] == CLASSES and meta["small_classes"] == ["car"]
    assert meta["bands"] == 3 and meta["gsd_m"] == pytest.approx(0.5) and meta["tile_size"] == 640
    assert len(meta["colours"]) == 3 and meta["normalisation"]["method"] == "percentile_stretch"
    assert meta["training"]["coarse"]["steps"] == 3 and meta["training"]["fine"]["steps"] == 2
    assert model.config.small_classes == (2,)


def test_train_from_polygons_in_another_crs(data):
    import geopandas as gpd
    import pyogrio
    from pyproj import Transformer

    from geors.train.seg_data import load_training_tiles

    tr = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    polys = [shapely.box(*(T * (30, 70)), *(T * (90, 20))), shapely.box(*(T * (40, 104)), *(T * (48, 100)))]
    polys = [shapely.transform(p, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1]))) for p in polys]
    vec = data["dir"] / "labels.geojson"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"kind": ["roof", "car"]}, geometry=polys, crs="EPSG:4326"), vec)
    tiles, names, info = load_training_tiles([(data["scene"], vec)], class_field="kind", background="ground", tile=128)
    assert names == ["ground", "car", "roof"]
    px = info["label_pixels"]
    assert px["roof"] == pytest.approx(50 * 60, rel=0.05) and px["car"] == pytest.approx(32, rel=0.3)
    assert px["ground"] + px["roof"] + px["car"] == 160 * 200


def test_label_raster_in_another_crs_is_reprojected(data):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from geors.train.seg_data import load_training_tiles

    with rasterio.open(data["labels"]) as src:
        t2, w2, h2 = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        dst = np.full((h2, w2), 255, np.uint8)
        reproject(src.read(1), dst, src_transform=src.transform, src_crs=src.crs, dst_transform=t2,
                  dst_crs="EPSG:3857", resampling=Resampling.nearest, src_nodata=255, dst_nodata=255)
        tags = src.tags()
    other = data["dir"] / "labels_3857.tif"
    with rasterio.open(other, "w", driver="GTiff", width=w2, height=h2, count=1, dtype="uint8", crs="EPSG:3857",
                       transform=t2, nodata=255) as out:
        out.write(dst, 1)
        out.update_tags(**tags)
    tiles, names, info = load_training_tiles([(data["scene"], other)], tile=256)
    assert names == CLASSES
    assert info["label_pixels"]["roof"] == pytest.approx(3000, rel=0.1)


# ----------------------------------------------------------------------------- bad input
def _no_crs_labels(data) -> Path:
    _, lab = _scene_arrays()
    p = data["dir"] / "nocrs.tif"
    with rasterio.open(p, "w", driver="GTiff", width=lab.shape[1], height=lab.shape[0], count=1, dtype="uint8") as d:
        d.write(lab, 1)
        d.update_tags(geors_classes=json.dumps({n: i for i, n in enumerate(CLASSES)}))
    return p


def test_bad_labels_exit_2_nothing_written(data):
    out = data["dir"] / "m.safetensors"
    base = ["train", "segmenter", "--scene", str(data["scene"]), "--small-classes", "car", "-o", str(out),
            "--coarse-steps", "1", "--fine-steps", "1", "--crop", "64", "--device", "cpu", "--max-minutes", "0"]
    r = CliRunner().invoke(main, base + ["--labels", str(_no_crs_labels(data))])
    assert r.exit_code == 2 and "has no CRS but" in r.output and "EPSG:32633" in r.output and "nocrs.tif" in r.output
    # class ids missing from the class list
    r = CliRunner().invoke(main, base + ["--labels", str(data["labels"]), "--classes", "ground,roof"])
    assert r.exit_code == 2 and "[2]" in r.output and "--classes" in r.output
    # small class not in the labels
    r = CliRunner().invoke(main, base[:5] + ["bus"] + base[6:] + ["--labels", str(data["labels"])])
    assert r.exit_code == 2 and "bus" in r.output
    assert not out.exists()


def test_segment_model_for_other_bands_exit_2(data, tmp_path):
    from geors.models.registry import save_model

    m4 = save_model(C2FNet(C2FNetConfig(in_channels=4, num_classes=3, small_classes=(2,))).eval(),
                    {"architecture": "c2fnet", "classes": CLASSES, "bands": 4, "tile_size": 96},
                    tmp_path / "four.safetensors")
    out = data["dir"] / "o.gpkg"
    r = CliRunner().invoke(main, ["segment", str(data["scene"]), "-o", str(out), "--segmenter", str(m4),
                                  "--device", "cpu", "--progress", "none"])
    assert r.exit_code == 2 and "4 band(s)" in r.output and "scene.tif" in r.output and "--bands" in r.output
    assert not out.exists()


def test_segment_cli_and_eval(data, tiny_model):
    import pyogrio

    out = data["dir"] / "o.gpkg"
    ras = data["dir"] / "o.tif"
    r = CliRunner().invoke(main, ["segment", str(data["scene"]), "-o", str(out), "--segmenter", str(tiny_model),
                                  "--raster-out", str(ras), "--device", "cpu", "--progress", "none"])
    assert r.exit_code == 0, r.output
    df = pyogrio.read_dataframe(out, layer="segmentation")
    assert len(df) > 0 and set(df["class"]) <= set(CLASSES) and (df["area_m2"] > 0).all()
    # through the pipeline: the painted raster equals the tiles' core class rasters, and the layer has
    # exactly one feature per connected class region of it (dissolved across cores) with its area
    from rasterio.features import shapes

    from geors.raster import open_scene
    from geors.segment import ClassRasterWriter, SegmentStage
    from geors.tiling import TileGrid

    sc = open_scene(data["scene"])
    stage = SegmentStage(str(tiny_model), device="cpu")
    tiles = list(TileGrid(sc, 96, 32))
    ref = data["dir"] / "ref.tif"
    with ClassRasterWriter(ref, sc, CLASSES) as w:
        for t, r in zip(tiles, stage(sc, tiles, [sc.read_tile(t) for t in tiles]), strict=True):
            w.write(t, r.class_raster)
    with rasterio.open(ras) as a, rasterio.open(ref) as b:
        got = a.read(1)
        np.testing.assert_array_equal(got, b.read(1))
    regions = sorted(shapely.geometry.shape(g).area * 0.25 for g, v in shapes(got, mask=got != 255, connectivity=4))
    np.testing.assert_allclose(sorted(df.geometry.area), regions, rtol=1e-9)
    # raster vs itself: perfect; vs the truth raster: per-class figures in JSON
    r = CliRunner().invoke(main, ["eval", "segmentation", str(ras), str(ras)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["miou"] == pytest.approx(1.0)
    # the fixture's 255 strip is truly unlabelled: --ignore-unlabelled leaves it out (the default counts it as
    # background, see test_eval_segmentation.py)
    r = CliRunner().invoke(main, ["eval", "segmentation", str(ras), str(data["labels"]), "--scene", str(data["scene"]),
                                  "--ignore-unlabelled"])
    res = json.loads(r.output)
    assert set(res["classes"]) == set(CLASSES) and res["pixels"] == 150 * 200
    # the GeoPackage layer as PRED gives the same figures as the raster
    r = CliRunner().invoke(main, ["eval", "segmentation", str(out), str(data["labels"]), "--scene", str(data["scene"]),
                                  "--ignore-unlabelled"])
    res2 = json.loads(r.output)
    assert res2["miou"] == pytest.approx(res["miou"], abs=1e-9)


def test_confusion_and_metrics():
    from geors.evaluate.segmentation import confusion_matrix, segmentation_metrics

    t = np.array([0, 0, 1, 1, 2, 255])
    p = np.array([0, 1, 1, 1, 255, 0])
    cm = confusion_matrix(p, t, 3)
    m = segmentation_metrics(cm, ["a", "b", "c"])
    assert m["classes"]["a"]["iou"] == pytest.approx(0.5) and m["classes"]["b"]["iou"] == pytest.approx(2 / 3)
    assert m["classes"]["c"]["iou"] == 0.0 and m["classes"]["c"]["recall"] == 0.0
    assert m["pixels"] == 5


DOTA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dota-P1888"


@pytest.mark.skipif(not (DOTA / "P1888.txt").exists(), reason="DOTA P1888 sample (../shared) not available")
def test_dota_vehicle_polygons_become_small_object_labels(tmp_path):
    """Real small objects: DOTA quadrilaterals (pixel coordinates) as polygons in a projected CRS."""
    import geopandas as gpd
    import pyogrio

    from geors.train.seg_data import load_training_tiles

    lines = (DOTA / "P1888.txt").read_text().splitlines()
    gsd = float(lines[1].split(":")[1])
    with rasterio.open(DOTA / "P1888.png") as src:
        rgb = src.read()
    t = Affine(gsd, 0, 500000.0, 0, -gsd, 3300000.0)
    scene = tmp_path / "p1888.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3, dtype="uint8",
                       crs="EPSG:32617", transform=t) as dst:
        dst.write(rgb)
    rows = [ln.split() for ln in lines[2:] if len(ln.split()) >= 9]
    polys = [shapely.Polygon([t * (float(r[i]), float(r[i + 1])) for i in range(0, 8, 2)]) for r in rows]
    vec = tmp_path / "vehicles.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"class": [r[8] for r in rows]}, geometry=polys, crs="EPSG:32617"), vec)
    tiles, names, info = load_training_tiles([(scene, vec)], background="background", tile=256)
    assert names == ["background", "large-vehicle", "small-vehicle"]
    px = info["label_pixels"]
    want = sum(p.area for p, r in zip(polys, rows, strict=True) if r[8] == "large-vehicle") / gsd ** 2
    assert px["large-vehicle"] == pytest.approx(want, rel=0.1)
    assert 0 < px["small-vehicle"] < px["large-vehicle"]
