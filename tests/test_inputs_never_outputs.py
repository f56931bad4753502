"""No command writes over one of its inputs (issue 26, finding 1b): one helper,
:func:`geors.paths.check_outputs_not_inputs`, called by every command that writes files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from click.testing import CliRunner

from geors.cli.main import main
from geors.errors import OutputError
from geors.paths import check_outputs_not_inputs
from tests.mask_scenes import DISCS, transform, write_disc_scene


@pytest.fixture()
def inputs(tmp_path):
    scene, _ = write_disc_scene(tmp_path / "discs.tif")
    t = transform()
    polys = [shapely.box(*(t @ (cx - r, cy + r)), *(t @ (cx + r, cy - r))) for cx, cy, r in DISCS]
    boxes = tmp_path / "boxes.gpkg"
    gpd.GeoDataFrame({"kind": ["tank"] * len(polys)}, geometry=polys, crs="EPSG:32633").to_file(boxes)
    return scene, boxes


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def geors(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_the_helper_sees_links_and_other_spellings(tmp_path):
    a = tmp_path / "a.tif"
    a.write_bytes(b"x")
    link = tmp_path / "link.tif"
    os.symlink(a, link)
    with pytest.raises(OutputError, match=r"-o is the same file as the --scene input"):
        check_outputs_not_inputs({"-o": link}, {"--scene": [tmp_path / "other.tif", a]})
    with pytest.raises(OutputError, match="given as both -o and --instances"):
        check_outputs_not_inputs({"-o": tmp_path / "x.tif", "--instances": tmp_path / "sub" / ".." / "x.tif"}, {})
    # a model *name* or an engine name is not a file: nothing to compare
    check_outputs_not_inputs({"-o": tmp_path / "out.gpkg"}, {"--model": "default", "--sam": "box"})


def test_label_refuses_one_file_for_the_labels_and_the_instances(inputs, tmp_path):
    # regression: `geors label --instances X -o X` exited 0 and left only the instance raster
    scene, boxes = inputs
    x = tmp_path / "x.tif"
    r = geors("label", scene, "--boxes", boxes, "--sam", "box", "-o", x, "--instances", x)
    assert r.exit_code == 2 and "given as both -o and --instances" in r.output, r.output
    assert not x.exists() and not (tmp_path / "x.masks.gpkg").exists()


def test_masks_never_write_into_the_boxes_file(inputs):
    # regression: `geors masks --boxes B.gpkg -o B.gpkg` added the instances layer to the user's boxes file
    scene, boxes = inputs
    before = digest(boxes)
    r = geors("masks", scene, "--boxes", boxes, "--sam", "box", "-o", boxes)
    assert r.exit_code == 2 and "--boxes input" in r.output, r.output
    assert digest(boxes) == before


def test_detect_never_writes_over_its_model(tmp_path, inputs):
    scene, _ = inputs
    from geors.models.r2cnn import R2CNN, R2CNNConfig
    from geors.models.registry import save_model

    model = tmp_path / "m.safetensors"
    save_model(R2CNN(R2CNNConfig(num_classes=1, anchor_scales=[16.0, 32.0])),
               {"classes": ["blob"], "bands": 3, "tile_size": 256, "overlap": 64}, model)
    before = digest(model)
    r = geors("detect", scene, "--model", model, "--device", "cpu", "-o", model)
    assert r.exit_code == 2 and "--model input" in r.output, r.output
    assert digest(model) == before


def test_save_config_never_writes_over_a_scene(inputs, tmp_path):
    # regression: --save-config wrote the TOML over the scene GeoTIFF before anything was checked
    scene, _ = inputs
    before = digest(scene)
    r = geors("tiles", scene, "-o", tmp_path / "t.gpkg", "--save-config", scene)
    assert r.exit_code == 2 and "--save-config is the same file as the SCENES input" in r.output, r.output
    assert digest(scene) == before
    assert not (tmp_path / "t.gpkg").exists()


def test_save_config_into_a_missing_folder_is_one_message(inputs, tmp_path):
    # regression: a FileNotFoundError traceback (exit 1)
    scene, _ = inputs
    r = geors("tiles", scene, "-o", tmp_path / "t.gpkg", "--save-config", tmp_path / "nope" / "run.toml")
    assert r.exit_code == 2, r.output
    assert "--save-config" in r.output and "does not exist" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not (tmp_path / "t.gpkg").exists()


@pytest.mark.parametrize("command", [["train", "detector"], ["train", "gate"],
                                     ["train", "segmenter", "--small-classes", "tank"]])
def test_training_never_writes_the_model_over_its_scene_or_labels(inputs, command):
    # regression: `geors train detector --scene S.tif ... -o S.tif` exited 0 and replaced the GeoTIFF by the model
    scene, boxes = inputs
    for target, option in ((scene, "--scene"), (boxes, "--labels")):
        before = digest(target)
        r = geors(*command, "--scene", scene, "--labels", boxes, "-o", target)
        assert r.exit_code == 2 and f"{option} input" in r.output, r.output
        assert digest(target) == before




@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """A scene, its boxes, the detections + instances GeoPackage of a random-weight model, a label raster."""
    import numpy as np
    import rasterio

    from geors.models.r2cnn import R2CNN, R2CNNConfig
    from geors.models.registry import save_model

    d = tmp_path_factory.mktemp("evals")
    scene, _ = write_disc_scene(d / "discs.tif", 300, 200)
    t = transform()
    boxes = d / "boxes.gpkg"
    gpd.GeoDataFrame({"kind": ["tank"]}, geometry=[shapely.box(*(t @ (70, 130)), *(t @ (130, 70)))],
                     crs="EPSG:32633").to_file(boxes)
    model = save_model(R2CNN(R2CNNConfig(num_classes=1, anchor_scales=[16.0, 32.0])),
                       {"classes": ["tank"], "bands": 3, "tile_size": 256, "overlap": 64, "gate_threshold": 0.0},
                       d / "m.safetensors")
    out = d / "m.gpkg"
    r = geors("run", scene, "--model", model, "--sam", "box", "--device", "cpu", "--score-threshold", "0.5",
              "-o", out)
    assert r.exit_code == 0, r.output
    label = d / "label.tif"
    with rasterio.open(label, "w", driver="GTiff", width=300, height=200, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=t) as dst:
        dst.write(np.ones((1, 200, 300), np.uint8))
        dst.update_tags(geors_classes='{"bg": 0, "tank": 1}')
    return scene, boxes, out, label


@pytest.mark.parametrize("case", ["eval detections", "eval masks", "eval segmentation", "preview"])
def test_eval_and_preview_never_write_over_their_inputs(run_output, tmp_path, case):
    # regression: `geors eval detections PRED TRUTH -o TRUTH` replaced the truth GeoPackage by the JSON (and
    # the other evaluations alike), `geors preview S.tif GPKG -o S.tif` replaced the scene by the picture
    import shutil

    scene, boxes, out, label = (Path(shutil.copy(p, tmp_path / p.name)) for p in run_output)
    args, target, option = {
        "eval detections": (["eval", "detections", out, boxes, "-o", boxes], boxes, "TRUTH"),
        "eval masks": (["eval", "masks", out, boxes, "-o", out], out, "PRED"),
        "eval segmentation": (["eval", "segmentation", label, label, "-o", label], label, "PRED"),
        "preview": (["preview", scene, out, "-o", scene], scene, "SCENE")}[case]
    before = digest(target)
    r = geors(*args)
    assert r.exit_code == 2 and f"{option} input" in r.output, r.output
    assert digest(target) == before
