"""Segmenter training with the labels users draw: background by default, refusals, phases, budget, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner

from geors.cli.main import main

CRS = "EPSG:32633"
T = Affine(0.5, 0, 400000.0, 0, -0.5, 5000000.0)
SHIPS = [(y, x) for y in (10, 50, 90) for x in (12, 60, 100)] + [(30, 36), (70, 80), (110, 40)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path: Path, arr: np.ndarray, **kw) -> Path:
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype.name, crs=CRS, transform=T, **kw) as dst:
        dst.write(arr)
    return path


@pytest.fixture
def harbour(tmp_path: Path) -> dict[str, Path]:
    """A 128 px scene of dark textured water with 12 bright 6 x 10 px ships; ship polygons, one class."""
    import geopandas as gpd
    import pyogrio

    rng = np.random.default_rng(0)
    img = (rng.random((3, 128, 128)) * 50 + 40).astype(np.uint8)
    truth = np.zeros((128, 128), np.uint8)
    polys = []
    for y, x in SHIPS:
        img[:, y:y + 6, x:x + 10] = (rng.random((3, 6, 10)) * 30 + 200).astype(np.uint8)
        truth[y:y + 6, x:x + 10] = 1
        polys.append(shapely.box(*(T * (x, y + 6)), *(T * (x + 10, y))))
    scene = _write(tmp_path / "harbour.tif", img)
    vec = tmp_path / "ships.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"class": ["ship"] * len(polys)}, geometry=polys, crs=CRS), vec)
    return {"scene": scene, "ships": vec, "truth": truth, "dir": tmp_path}


FAST = ["--crop", "64", "--batch-size", "4", "--window", "32", "--window-stride", "16", "--device", "cpu",
        "--val-fraction", "0", "--max-minutes", "0"]


def _train(harbour, *extra: str) -> tuple[object, Path]:
    out = harbour["dir"] / "m.safetensors"
    r = CliRunner().invoke(main, ["train", "segmenter", "--scene", str(harbour["scene"]), "--labels",
                                  str(harbour["ships"]), "--class-field", "class", "--small-classes", "ship",
                                  "-o", str(out), *FAST, *extra])
    return r, out


def test_one_class_polygons_train_against_background_and_do_not_paint_everything(harbour):
    """Issue 25 finding 2: ship polygons alone gave a one-class model that painted the whole scene as ship."""
    from geors.raster import open_scene
    from geors.segment import Segmenter

    r, out = _train(harbour, "--coarse-steps", "80", "--fine-steps", "20")
    assert r.exit_code == 0, r.output
    assert "class 'background' (id 0)" in r.output
    seg = Segmenter.load(out, device="cpu")
    assert seg.classes == ["background", "ship"] and seg.meta["background"] == "background"
    img = open_scene(harbour["scene"]).read_window(rasterio.windows.Window(0, 0, 128, 128))
    pred = seg.predict(img.image[None])[0]
    truth = harbour["truth"]
    ship_share = float((pred == 1).mean())
    iou = ((pred == 1) & (truth == 1)).sum() / ((pred == 1) | (truth == 1)).sum()
    assert ship_share < 3 * truth.mean(), f"{ship_share:.2f} of the scene painted as ship"
    assert iou > 0.3, iou


def test_one_class_polygons_with_unlabelled_ignored_are_refused(harbour):
    r, out = _train(harbour, "--unlabelled", "ignore", "--coarse-steps", "2", "--fine-steps", "1")
    assert r.exit_code == 2, r.output
    assert "every labelled pixel is class 'ship'" in r.output and "--unlabelled ignore" in r.output
    assert "ships.gpkg" in r.output and not out.exists()
    r, _ = _train(harbour, "--unlabelled", "ignore", "--background", "water")
    assert r.exit_code == 2 and "--background" in r.output and "--unlabelled ignore" in r.output


def test_single_class_label_raster_without_background_is_refused(harbour):
    """A label raster with ships only (255 elsewhere) has nothing to contrast them with: exit 2, what to do."""
    lab = np.where(harbour["truth"] == 1, 1, 255).astype(np.uint8)
    path = _write(harbour["dir"] / "ships.tif", lab, nodata=255)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(geors_classes=json.dumps({"water": 0, "ship": 1}))
    out = harbour["dir"] / "m.safetensors"
    base = ["train", "segmenter", "--scene", str(harbour["scene"]), "--labels", str(path), "--small-classes", "ship",
            "-o", str(out), *FAST, "--coarse-steps", "3", "--fine-steps", "2"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 2, r.output
    assert "ships.tif" in r.output and "every labelled pixel is class 'ship'" in r.output
    assert "--background NAME" in r.output and not out.exists()
    # raster labels keep 255 = unlabelled; naming the background class makes them trainable
    r = CliRunner().invoke(main, base + ["--background", "water"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["classes"] == ["water", "ship"] and res["background"] == "water"


def _tiles(classes_of_pixels: np.ndarray, n: int = 2):
    from geors.train.seg_data import SegTile

    rng = np.random.default_rng(0)
    return [SegTile(rng.random((3, 64, 64)).astype(np.float32), classes_of_pixels.copy(), f"t{i}") for i in range(n)]


def test_coarse_phase_with_nothing_to_learn_does_not_run():
    """Every labelled pixel one class: the coarse loss is 0 from the first step; no step runs, training is refused."""
    from geors.errors import LabelError
    from geors.train.segmenter import SegTrainConfig, train_segmenter

    lab = np.full((64, 64), 255, np.uint8)
    lab[10:20, 10:30] = 0
    steps = []
    with pytest.raises(LabelError, match="coarse phase has nothing to learn"):
        train_segmenter(_tiles(lab), ["ship"], ["ship"], SegTrainConfig(coarse_steps=40, fine_steps=10, crop_size=32,
                                                                         batch_size=2, log_every=1, device="cpu"),
                        progress=steps.append)
    assert steps == []


def test_fine_phase_without_small_pixels_is_skipped_and_the_budget_goes_to_coarse():
    from geors.train.segmenter import SegTrainConfig, train_segmenter

    lab = np.zeros((64, 64), np.uint8)
    lab[20:40, 20:40] = 1  # ground and roof; no car pixel
    cfg = SegTrainConfig(coarse_steps=3, fine_steps=3, crop_size=32, batch_size=2, device="cpu", val_fraction=0,
                         arch={"window": 16, "window_stride": 8})
    _, meta = train_segmenter(_tiles(lab), ["ground", "roof", "car"], ["car"], cfg)
    fine = meta["training"]["fine"]
    assert fine["steps"] == 0 and "no labelled pixel of the small classes ['car']" in fine["skipped"]
    assert meta["training"]["coarse"]["steps"] == 3
    assert meta["arch_args"]["top_n"] == 0  # an untrained fine network refines nothing
    # with a time budget the coarse phase plans its steps over the whole budget, not over its 3/6 share
    _, meta = train_segmenter(_tiles(lab), ["ground", "roof", "car"], ["car"],
                              SegTrainConfig(**{**cfg.to_dict(), "max_seconds": 2.0}))
    coarse = meta["training"]["coarse"]
    assert meta["training"]["fine"]["steps"] == 0
    assert coarse["seconds"] >= 1.6 and coarse["steps"] > 3


def test_time_budget_is_used_not_only_a_cap():
    """--max-minutes plans the steps from the measured step time: more steps than the default counts when time allows."""
    from geors.train.segmenter import SegTrainConfig, train_segmenter

    lab = np.zeros((64, 64), np.uint8)
    lab[20:30, 20:30] = 1
    cfg = SegTrainConfig(coarse_steps=2, fine_steps=2, crop_size=32, batch_size=2, device="cpu", val_fraction=0,
                         max_seconds=6.0, arch={"window": 16, "window_stride": 8})
    _, meta = train_segmenter(_tiles(lab), ["ground", "boat"], ["boat"], cfg)
    tr = meta["training"]
    assert tr["coarse"]["steps"] > 2 and tr["fine"]["steps"] > 2
    assert tr["coarse"]["schedule"]["mode"] == "time budget" and tr["coarse"]["schedule"]["plans"]
    assert 4.0 <= tr["seconds"] <= 6.0 + 2.0


def test_labelled_area_limits_the_background(harbour):
    import geopandas as gpd
    import pyogrio

    from geors.train.seg_data import load_training_tiles

    area = harbour["dir"] / "area.geojson"
    pyogrio.write_dataframe(gpd.GeoDataFrame(geometry=[shapely.box(*(T * (0, 128)), *(T * (64, 0)))], crs=CRS), area)
    _, names, info = load_training_tiles([(harbour["scene"], harbour["ships"])], class_field="class")
    assert names == ["background", "ship"] and info["background"] == "background"
    ship = int(harbour["truth"].sum())
    assert info["label_pixels"] == {"background": 128 * 128 - ship, "ship": ship}
    _, _, info = load_training_tiles([(harbour["scene"], harbour["ships"])], class_field="class", labelled_area=area)
    left_ships = int(harbour["truth"][:, :64].sum())
    assert info["label_pixels"] == {"background": 128 * 64 - left_ships, "ship": ship}
    assert info["sources"][0]["unlabelled"] == "background"


def test_validation_blocks_are_held_back_and_reported(harbour):
    from geors.train.seg_data import load_training_tiles, split_validation

    tiles, names, _ = load_training_tiles([(harbour["scene"], harbour["ships"])], class_field="class")
    train, val, info = split_validation(tiles, len(names), fraction=0.15, block=32, seed=0)
    assert val and info["blocks"] >= 2
    held = sum(int((t.label == 1).sum()) for t in val)
    left = sum(int((t.label == 1).sum()) for t in train)
    assert held >= 0.15 * harbour["truth"].sum() and left > 0
    assert held + left <= harbour["truth"].sum()  # no ship pixel both trained on and validated
    r, out = _train(harbour, "--coarse-steps", "6", "--fine-steps", "4", "--val-fraction", "0.2")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert set(res["validation_iou"]) == {"background", "ship"}
    assert "validation IoU per class" in r.output and "validation mIoU" in r.output
    from geors.models.registry import load_model

    _, meta = load_model(out)
    assert meta["training"]["validation"]["iou"] == res["validation_iou"]


def test_config_round_trips_through_toml_with_type_checks(tmp_path):
    from geors.errors import ConfigError
    from geors.train.segmenter import SegTrainConfig

    cfg = SegTrainConfig(coarse_steps=10, max_seconds=90, arch={"window": 64, "zoom": 2})
    assert cfg.max_seconds == 90.0
    p = tmp_path / "seg.toml"
    p.write_text(cfg.to_toml())
    assert SegTrainConfig.from_toml(p) == cfg
    assert SegTrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"batch_size": "4"}, {"lr": True}, {"max_seconds": "60"}, {"arch": {"windw": 3}}):
        with pytest.raises(ConfigError):
            SegTrainConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        SegTrainConfig.from_dict({"coarse_step": 3})
    with pytest.raises(ConfigError, match="val_fraction"):
        SegTrainConfig(val_fraction=0.7).validate()


def test_background_only_windows_are_sampled_not_all_loaded(harbour):
    """Memory follows the labels: one ship in a corner loads its window and a few background windows."""
    import geopandas as gpd
    import pyogrio

    from geors.train.seg_data import MIN_BACKGROUND_WINDOWS, load_training_tiles

    one = harbour["dir"] / "one.gpkg"
    y, x = SHIPS[0]
    pyogrio.write_dataframe(gpd.GeoDataFrame({"class": ["ship"]}, geometry=[shapely.box(*(T * (x, y + 6)),
                                                                                          *(T * (x + 10, y)))],
                                             crs=CRS), one)
    tiles, names, info = load_training_tiles([(harbour["scene"], one)], class_field="class", tile=16)
    assert len(tiles) == 2 + MIN_BACKGROUND_WINDOWS  # the ship's two windows (x 12..22) and 4 of the other 62
    assert info["label_pixels"]["ship"] == 60
    assert len({t.name for t in tiles}) == len(tiles)


def test_raster_unlabelled_background_mode(harbour):
    from geors.train.seg_data import load_training_tiles

    lab = np.where(harbour["truth"] == 1, 0, 255).astype(np.uint8)
    path = _write(harbour["dir"] / "ships0.tif", lab, nodata=255)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(geors_classes=json.dumps({"ship": 0}))
    _, names, info = load_training_tiles([(harbour["scene"], path)], unlabelled="background")
    ship = int(harbour["truth"].sum())
    assert names == ["background", "ship"] and info["label_pixels"] == {"background": 128 * 128 - ship, "ship": ship}


def test_fine_stage_that_validates_worse_is_not_kept(monkeypatch):
    """A fine network that makes validation worse than the coarse network alone: the model refines no window."""
    import geors.train.segmenter as seg

    real = seg.validate_segmenter

    def worse_with_refinement(model, tiles, classes, refine, device):
        res = real(model, tiles, classes, refine, device)
        return {**res, "miou": (res["miou"] or 0.0) - (0.1 if refine else 0.0)}

    monkeypatch.setattr(seg, "validate_segmenter", worse_with_refinement)
    lab = np.zeros((64, 64), np.uint8)
    lab[20:30, 20:30] = 1
    cfg = seg.SegTrainConfig(coarse_steps=3, fine_steps=3, crop_size=32, batch_size=2, device="cpu",
                             arch={"window": 16, "window_stride": 8})
    model, meta = seg.train_segmenter(_tiles(lab), ["ground", "boat"], ["boat"], cfg, val_tiles=_tiles(lab, 1))
    assert meta["arch_args"]["top_n"] == 0 and model.config.top_n == 0
    assert meta["training"]["fine"]["kept"] is False and meta["training"]["fine"]["steps"] == 3
    monkeypatch.setattr(seg, "validate_segmenter", real)
    _, meta = seg.train_segmenter(_tiles(lab), ["ground", "boat"], ["boat"], cfg, val_tiles=_tiles(lab, 1))
    assert meta["arch_args"]["top_n"] == 32 and "kept" not in meta["training"]["fine"]


def test_nodata_pixels_stay_ignored_when_outside_is_background(harbour):
    from geors.train.seg_data import load_training_tiles

    with rasterio.open(harbour["scene"]) as src:
        img = src.read()
    img[:, 100:, :] = 0  # a nodata strip at the bottom (no ship in it but the last row's ship at y 110)
    scene = _write(harbour["dir"] / "nodata.tif", img, nodata=0)
    _, _, info = load_training_tiles([(scene, harbour["ships"])], class_field="class")
    ships = int(harbour["truth"][:100].sum())
    assert info["label_pixels"] == {"background": 128 * 100 - ships, "ship": ships}
