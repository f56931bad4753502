"""``geors.train``: one training API for the detector and the segmenter (issue 25, "One training API").

Files in, model file out, from a frozen :class:`TrainingRun` (``[data]`` + ``[train]``) that reads and writes
TOML; the CLI commands are thin callers of it, so the CLI and the API make the same model for the same
options and seed. Tiny synthetic scenes, a few fixed steps, one thread: fast.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner

import geors
from geors.errors import Cancelled, ConfigError, OutputError
from geors.models.registry import read_metadata
from geors.train.api import TrainData, TrainingRun, TrainResult
from geors.train.detector import TrainConfig
from geors.train.segmenter import SegTrainConfig

CRS = "EPSG:32617"
T = Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0)
SMALL_ARCH = {"rpn_batch": 64, "roi_batch": 32, "pre_nms_train": 300, "post_nms_train": 64, "post_nms_test": 50}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path: Path, img: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=img.shape[2], height=img.shape[1], count=img.shape[0],
                       dtype="uint8", crs=CRS, transform=T) as ds:
        ds.write(img)
    return path


@pytest.fixture
def squares(tmp_path: Path) -> dict:
    """A 200 px scene of dark noise with 16 bright squares of 10-15 px; their boxes in a GeoPackage."""
    import geopandas as gpd

    rng = np.random.default_rng(3)
    img = (rng.uniform(0, 0.25, (3, 200, 200)) * 255).astype(np.uint8)
    boxes: list[list[int]] = []
    while len(boxes) < 16:
        s = int(rng.integers(10, 16))
        x, y = (int(v) for v in rng.integers(4, 200 - s - 4, 2))
        if any(x < b[2] + 4 and x + s + 4 > b[0] and y < b[3] + 4 and y + s + 4 > b[1] for b in boxes):
            continue
        img[:, y:y + s, x:x + s] = 230
        boxes.append([x, y, x + s, y + s])
    scene = _write(tmp_path / "squares.tif", img)
    labels = tmp_path / "squares.gpkg"
    geoms = [shapely.box(*(T * (b[0], b[3])), *(T * (b[2], b[1]))) for b in boxes]
    gpd.GeoDataFrame({"kind": ["Square"] * len(geoms)}, geometry=geoms, crs=CRS).to_file(labels)
    return {"scene": scene, "labels": labels, "dir": tmp_path}


@pytest.fixture
def harbour(tmp_path: Path) -> dict:
    """A 128 px scene of textured water with 12 bright ships; ship polygons, one class (background outside)."""
    import geopandas as gpd

    rng = np.random.default_rng(0)
    img = (rng.random((3, 128, 128)) * 50 + 40).astype(np.uint8)
    polys = []
    for y, x in [(y, x) for y in (10, 50, 90) for x in (12, 60, 100)] + [(30, 36), (70, 80), (110, 40)]:
        img[:, y:y + 6, x:x + 10] = 220
        polys.append(shapely.box(*(T * (x, y + 6)), *(T * (x + 10, y))))
    scene = _write(tmp_path / "harbour.tif", img)
    labels = tmp_path / "ships.gpkg"
    gpd.GeoDataFrame({"class": ["ship"] * len(polys)}, geometry=polys, crs=CRS).to_file(labels)
    return {"scene": scene, "labels": labels, "dir": tmp_path}


def _detector_config(**kw) -> TrainConfig:
    base = dict(max_seconds=None, steps=3, crop_size=64, batch_size=2, warmup_steps=1, device="cpu", seed=5,
                arch=SMALL_ARCH, val_fraction=0.0)
    return TrainConfig(**{**base, **kw})


SEG_CONFIG = SegTrainConfig(coarse_steps=3, fine_steps=2, crop_size=64, batch_size=2, warmup_steps=1, device="cpu",
                            seed=4, val_fraction=0.0, arch={"window": 32, "window_stride": 16})


# ----------------------------------------------------------------------------- the API trains
def test_geors_train_is_callable_and_exported_even_after_the_training_modules_are_imported():
    import geors.train.detector  # noqa: F401 - importing the package's modules must not hide the function

    assert callable(geors.train)
    assert geors.TrainData is TrainData and geors.TrainingRun is TrainingRun and geors.TrainResult is TrainResult
    assert {"train", "TrainData", "TrainingRun", "TrainResult"} <= set(geors.__all__)


def test_detector_from_a_scene_and_geopackage_labels(squares):
    out = squares["dir"] / "squares.safetensors"
    result = geors.train("detector", out, scenes=[squares["scene"]], labels=[squares["labels"]], class_field="kind",
                         rename_class={"Square": "square"},
                         config=_detector_config(val_fraction=0.2, validations=1, patience=None))
    assert isinstance(result, TrainResult) and result.model == out and out.exists()
    assert result.classes == ("square",) and result.steps == 3 and result.kind == "detector"
    assert result.validation_ap50 is not None and 0 <= result.validation_ap50 <= 1
    assert result.calibration["score"]["status"] in ("calibrated", "default")
    assert result.summary["model"] == str(out) and result.messages[0].startswith(f"Model written to {out}")
    meta = read_metadata(out)
    assert meta["name"] == "squares" and meta["classes"] == ["square"] and meta["gsd_m"] == pytest.approx(0.5)
    assert meta["training"]["data"]["class_field"] == "kind" and meta["training"]["kind"] == "detector"
    assert meta["training"]["config"]["steps"] == 3


def test_segmenter_from_a_scene_and_polygons(harbour):
    out = harbour["dir"] / "ships.safetensors"
    data = TrainData(scenes=[harbour["scene"]], labels=[harbour["labels"]], class_field="class",
                     small_classes=["ship"], tile_size=256, overlap=32)
    notes: list[str] = []
    records: list[dict] = []
    result = geors.train("segmenter", out, data, SEG_CONFIG, name="harbour ships", notify=notes.append,
                         progress=records.append)
    assert result.kind == "segmenter" and out.exists() and result.classes == ("background", "ship")
    assert result.steps == 5 and result.summary["coarse_steps"] == 3 and result.summary["fine_steps"] == 2
    assert any("pixels outside the labels: class 'background'" in n for n in notes)
    assert records and {"phase", "step"} <= set(records[0])
    meta = read_metadata(out)
    assert meta["name"] == "harbour ships" and meta["tile_size"] == 256 and meta["overlap"] == 32
    assert meta["training"]["data"]["small_classes"] == ["ship"]


def test_output_that_is_an_input_is_refused_before_training(squares):
    with pytest.raises(OutputError, match="same file as the --labels input"):
        geors.train("detector", squares["labels"], scenes=[squares["scene"]], labels=[squares["labels"]],
                    config=_detector_config())
    with pytest.raises(OutputError, match="does not exist"):
        geors.train("detector", squares["dir"] / "no" / "m.safetensors", scenes=[squares["scene"]],
                    labels=[squares["labels"]], config=_detector_config())


def test_checks_the_cli_makes_stay(squares, harbour):
    data = TrainData(scenes=[squares["scene"]], labels=[squares["labels"]])
    out = squares["dir"] / "m.safetensors"
    with pytest.raises(ConfigError, match="--crop must be >= 32"):
        geors.train("detector", out, data, _detector_config(crop_size=16))
    with pytest.raises(ConfigError, match="--gate-scale"):
        geors.train("detector", out, data, _detector_config(gate_input_scale=16))
    with pytest.raises(ConfigError, match="one --labels per --scene"):
        geors.train("detector", out, TrainData(scenes=[squares["scene"]] * 2, labels=[squares["labels"]]))
    with pytest.raises(ConfigError, match="options of the segmenter"):
        geors.train("detector", out, TrainData(scenes=[squares["scene"]], labels=[squares["labels"]],
                                               small_classes=["square"]))
    with pytest.raises(ConfigError, match="--small-classes needs"):
        geors.train("segmenter", out, TrainData(scenes=[harbour["scene"]], labels=[harbour["labels"]]))
    with pytest.raises(ConfigError, match="not among the label classes"):
        geors.train("segmenter", out, TrainData(scenes=[harbour["scene"]], labels=[harbour["labels"]],
                                                class_field="class", small_classes=["boat"]), SEG_CONFIG)
    with pytest.raises(ConfigError, match="SegTrainConfig"):
        geors.train("segmenter", out, data, _detector_config())
    assert not out.exists()


@pytest.mark.parametrize("kind", ["detector", "segmenter"])
def test_cancel_stops_training_and_writes_no_model(squares, harbour, kind):
    cancel = threading.Event()
    cancel.set()
    if kind == "detector":
        out = squares["dir"] / "m.safetensors"
        args = dict(scenes=[squares["scene"]], labels=[squares["labels"]], config=_detector_config(steps=50))
    else:
        out = harbour["dir"] / "m.safetensors"
        args = dict(data=TrainData(scenes=[harbour["scene"]], labels=[harbour["labels"]], class_field="class",
                                   small_classes=["ship"]), config=SEG_CONFIG)
    with pytest.raises(Cancelled, match="no model was written"):
        geors.train(kind, out, cancel=cancel, **args)
    assert not out.exists()


# ----------------------------------------------------------------------------- TOML
def test_training_run_round_trips_through_toml(tmp_path):
    runs = [
        TrainingRun("detector", TrainData(scenes=["a.tif", "b.tif"], labels=["a.gpkg", "b.xml"],
                                          empty_scenes=["water.tif"], class_field="class",
                                          rename_class={"Tree": "tree", "Dead tree": "tree"}, bands=(4, 3, 2),
                                          allow_ungeoreferenced=True, gsd=0.1, tile_size=512, overlap=64),
                    TrainConfig(max_seconds=None, steps=800, scales=(0.75, 1.0), arch={"roi_ohem": 8},
                                gate_recall=None, patience=None, init_from="base.safetensors"), name="trees"),
        TrainingRun("gate", TrainData(scenes=["a.tif"], labels=["a.gpkg"]),
                    TrainConfig(train_only="gate", gate_pool="avg")),
        TrainingRun("segmenter", TrainData(scenes=["s.tif"], labels=["s.gpkg"], classes=("water", "ship"),
                                           small_classes=("ship",), background="water", unlabelled="ignore",
                                           labelled_area="area.gpkg"),
                    SegTrainConfig(max_seconds=120.0, lr=0.001, arch={"variant": "wide", "zoom": 2,
                                                                      "inference_stride": None})),
        TrainingRun("segmenter", TrainData(scenes=["s.tif"], labels=["s.gpkg"], small_classes=("ship",))),
    ]
    for i, run in enumerate(runs):
        path = tmp_path / f"run{i}.toml"
        path.write_text(run.to_toml())
        back = TrainingRun.from_toml(path)
        assert back == run, (run.to_toml(), back)
        assert back.to_toml() == run.to_toml()


def test_a_training_options_file_alone_is_read_as_a_run_without_data(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(TrainConfig(lr=0.01, crop_size=96).to_toml())
    run = TrainingRun.from_toml(path)
    assert run.kind == "detector" and run.train == TrainConfig(lr=0.01, crop_size=96) and run.data == TrainData()
    path.write_text("[train]\nlr = 0.002\n")
    assert TrainingRun.from_toml(path, kind="segmenter").train == SegTrainConfig(lr=0.002, max_seconds=600.0)


@pytest.mark.parametrize("text, where", [
    ('kind = "detector"\n[data]\nscenes = ["a.tif"]\nlabels = ["a.gpkg"]\nclass_field = 3\n', "[data] class_field"),
    ('[data]\nscenes = "a.tif"\n', "[data] scenes"),
    ('[data]\nbands = ["red"]\n', "[data] bands"),
    ('[data]\nallow_ungeoreferenced = "yes"\n', "[data] allow_ungeoreferenced"),
    ('kind = "detector"\n[train]\ncrop_size = "big"\n', "[train] crop_size"),
    ('kind = "segmenter"\n[train]\nlr = "fast"\n', "[train] lr"),
    ('kind = "segmenter"\n[train]\ncoarse_steps = 1.5\n', "[train] coarse_steps"),
    ('kind = "segmenter"\n[data]\nsmall_classes = "ship"\n', "[data] small_classes"),
])
def test_a_wrong_type_in_the_toml_is_one_message_naming_the_file_and_key(tmp_path, text, where):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        TrainingRun.from_toml(path)
    assert str(path) in str(exc.value) and where in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_keys_and_kinds_are_refused(tmp_path):
    path = tmp_path / "bad.toml"
    for text, words in [('kind = "classifier"\n', "kind"), ("[data]\nscene = ['a.tif']\n", "unknown data option"),
                        ('kind = "segmenter"\n[train]\ncrop = 64\n', "unknown segmenter training option"),
                        ("[data\n", "not valid TOML"),
                        ('kind = "detector"\nlr = 0.1\n', "unknown key.*'lr'.*a training run has kind"),
                        ('kind = "detector"\n[train]\nlr = 0.1\n[data]\nscenes = ["a.tif"]\n[more]\n',
                         "unknown key.*'more'")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=words):
            TrainingRun.from_toml(path)
    with pytest.raises(ConfigError, match="not found"):
        TrainingRun.from_toml(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------- the CLI is a caller of the API
def _cli(*args: str):
    from geors.cli.main import main

    return CliRunner().invoke(main, list(args))


def test_cli_and_api_train_the_same_detector(squares):
    cli_out = squares["dir"] / "cli.safetensors"
    r = _cli("train", "detector", "--scene", str(squares["scene"]), "--labels", str(squares["labels"]),
             "--class-field", "kind", "--max-minutes", "0", "--steps", "3", "--crop", "64", "--batch-size", "2",
             "--warmup", "1", "--device", "cpu", "--seed", "5", "--val-fraction", "0", "--progress", "none",
             *[a for k, v in SMALL_ARCH.items() for a in ("--arch", f"{k}={v}")], "-o", str(cli_out))
    assert r.exit_code == 0, r.output
    api_out = squares["dir"] / "api.safetensors"
    result = geors.train("detector", api_out, TrainData(scenes=[squares["scene"]], labels=[squares["labels"]],
                                                        class_field="kind"),
                         _detector_config(patience=5))
    assert result.steps == 3
    cli_meta, api_meta = read_metadata(cli_out), read_metadata(api_out)
    assert cli_meta["training"]["config"] == api_meta["training"]["config"]
    assert cli_meta["weights_sha256"] == api_meta["weights_sha256"]
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == result.steps


def test_cli_and_api_train_the_same_segmenter(harbour):
    cli_out = harbour["dir"] / "cli.safetensors"
    r = _cli("train", "segmenter", "--scene", str(harbour["scene"]), "--labels", str(harbour["labels"]),
             "--class-field", "class", "--small-classes", "ship", "--max-minutes", "0", "--coarse-steps", "3",
             "--fine-steps", "2", "--crop", "64", "--batch-size", "2", "--window", "32", "--window-stride", "16",
             "--device", "cpu", "--seed", "4", "--val-fraction", "0", "-o", str(cli_out))
    assert r.exit_code == 0, r.output
    api_out = harbour["dir"] / "api.safetensors"
    cfg = SegTrainConfig(**{**SEG_CONFIG.to_dict(), "warmup_steps": SegTrainConfig().warmup_steps,
                            "arch": {**SEG_CONFIG.arch, **{k: v for k, v in read_metadata(cli_out)["training"]
                                                           ["config"]["arch"].items() if k not in SEG_CONFIG.arch}}})
    geors.train("segmenter", api_out, TrainData(scenes=[harbour["scene"]], labels=[harbour["labels"]],
                                                class_field="class", small_classes=["ship"]), cfg)
    cli_meta, api_meta = read_metadata(cli_out), read_metadata(api_out)
    assert cli_meta["training"]["config"] == api_meta["training"]["config"]
    assert cli_meta["weights_sha256"] == api_meta["weights_sha256"]


def test_cli_save_config_is_a_training_run_the_api_trains_to_the_same_detector(squares):
    """``geors train detector --save-config run.toml`` writes [data] and [train]; ``geors.train`` of that file
    makes the model the command made; ``--config run.toml`` takes its data options too (the class field)."""
    conf, cli_out = squares["dir"] / "run.toml", squares["dir"] / "cli.safetensors"
    r = _cli("train", "detector", "--scene", str(squares["scene"]), "--labels", str(squares["labels"]),
             "--class-field", "kind", "--rename-class", "Square=square", "--max-minutes", "0", "--steps", "2",
             "--crop", "64", "--batch-size", "2", "--device", "cpu", "--val-fraction", "0", "--progress", "none",
             "--name", "cli squares", "--save-config", str(conf), "-o", str(cli_out))
    assert r.exit_code == 0, r.output
    run = TrainingRun.from_toml(conf)
    assert run.kind == "detector" and run.name == "cli squares" and run.data.class_field == "kind"
    assert run.data.rename_class == {"Square": "square"} and run.train.steps == 2 and run.train.max_seconds is None
    result = geors.train(run, squares["dir"] / "api.safetensors")
    assert result.classes == ("square",)
    assert read_metadata(result.model)["weights_sha256"] == read_metadata(cli_out)["weights_sha256"]
    again = squares["dir"] / "again.safetensors"
    r = _cli("train", "detector", "--scene", str(squares["scene"]), "--labels", str(squares["labels"]),
             "--config", str(conf), "--steps", "1", "--progress", "none", "-o", str(again))
    assert r.exit_code == 0, r.output
    meta = read_metadata(again)
    assert meta["classes"] == ["square"] and meta["name"] == "cli squares" and meta["training"]["steps"] == 1


def test_cli_save_config_of_the_segmenter_and_config_options_that_win(harbour):
    conf, cli_out = harbour["dir"] / "seg.toml", harbour["dir"] / "cli.safetensors"
    r = _cli("train", "segmenter", "--scene", str(harbour["scene"]), "--labels", str(harbour["labels"]),
             "--class-field", "class", "--small-classes", "ship", "--max-minutes", "0", "--coarse-steps", "2",
             "--fine-steps", "1", "--crop", "64", "--batch-size", "2", "--window", "32", "--window-stride", "16",
             "--device", "cpu", "--val-fraction", "0", "--save-config", str(conf), "-o", str(cli_out))
    assert r.exit_code == 0, r.output
    run = TrainingRun.from_toml(conf)
    assert run.kind == "segmenter" and run.data.small_classes == ("ship",) and run.train.arch["window"] == 32
    result = geors.train(run, harbour["dir"] / "api.safetensors")
    assert read_metadata(result.model)["weights_sha256"] == read_metadata(cli_out)["weights_sha256"]
    again = harbour["dir"] / "again.safetensors"
    r = _cli("train", "segmenter", "--scene", str(harbour["scene"]), "--labels", str(harbour["labels"]),
             "--small-classes", "ship", "--config", str(conf), "--coarse-steps", "1", "-o", str(again))
    assert r.exit_code == 0, r.output
    cfg = read_metadata(again)["training"]["config"]
    assert cfg["coarse_steps"] == 1 and cfg["fine_steps"] == 1 and cfg["arch"]["window"] == 32


def test_cli_save_config_never_writes_over_an_input(squares):
    r = _cli("train", "detector", "--scene", str(squares["scene"]), "--labels", str(squares["labels"]),
             "--save-config", str(squares["labels"]), "-o", str(squares["dir"] / "m.safetensors"))
    assert r.exit_code == 2 and "--save-config is the same file as the --labels input" in r.output


def test_cli_segmenter_with_one_step_phases_prints_its_progress(harbour):
    """Before: a phase of one step reported eta NaN and the command died with 'cannot convert float NaN to
    integer' (exit 1) after training."""
    out = harbour["dir"] / "one.safetensors"
    r = _cli("train", "segmenter", "--scene", str(harbour["scene"]), "--labels", str(harbour["labels"]),
             "--class-field", "class", "--small-classes", "ship", "--max-minutes", "0", "--coarse-steps", "1",
             "--fine-steps", "1", "--crop", "64", "--batch-size", "2", "--window", "32", "--window-stride", "16",
             "--device", "cpu", "--val-fraction", "0", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert out.exists() and json.loads(r.stdout.strip().splitlines()[-1])["coarse_steps"] == 1


def test_python_and_cli_defaults_agree_for_the_segmenter_budget(tmp_path):
    """``SegTrainConfig()`` has no budget; a run without [train] options gets the CLI's 10 minutes, in Python
    and from a TOML file alike, and a run without a budget keeps none through TOML."""
    data = TrainData(scenes=["s.tif"], labels=["s.gpkg"], small_classes=["ship"])
    assert TrainingRun("segmenter", data).train.max_seconds == 600.0
    path = tmp_path / "run.toml"
    path.write_text('kind = "segmenter"\n[data]\nscenes = ["s.tif"]\nlabels = ["s.gpkg"]\nsmall_classes = ["ship"]\n')
    assert TrainingRun.from_toml(path).train.max_seconds == 600.0
    none = TrainingRun("segmenter", data, SegTrainConfig(max_seconds=None))
    path.write_text(none.to_toml())
    assert TrainingRun.from_toml(path).train.max_seconds is None
