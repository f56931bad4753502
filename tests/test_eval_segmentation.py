"""`geors eval segmentation` against hand-computed figures on a hand-made raster pair (issue 26.3).

The pair: a 10 x 10 scene, truth "tree" on the 25 pixels of rows 0-4, columns 0-4, unlabelled (255)
elsewhere. PRED (a class GeoTIFF as `geors segment --raster-out` writes it: 255 = no class) marks
"tree" on one truth-tree pixel and on one unlabelled pixel; every other pixel is 255. It misses 24 of
the 25 tree pixels. Before the fix only PRED's two labelled pixels were scored (255 was taken as
nodata), so this prediction got mIoU 1.0 with the truth's ``background`` class and 0.5 without.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

TRANSFORM = Affine(0.5, 0, 500_000.0, 0, -0.5, 4_500_000.0)


def _write(path, arr, classes, nodata=255):
    bands = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
                       dtype="uint8", crs="EPSG:32617", transform=TRANSFORM, nodata=nodata) as ds:
        ds.write(bands)
        if classes is not None:
            ds.update_tags(geors_classes=json.dumps({n: i for i, n in enumerate(classes)}))
    return path


@pytest.fixture
def pair(tmp_path):
    truth = np.full((10, 10), 255, np.uint8)
    truth[:5, :5] = 0
    pred = np.full((10, 10), 255, np.uint8)
    pred[0, 0] = 0  # a hit
    pred[9, 9] = 0  # a false positive on an unlabelled (background) pixel
    return {"truth": _write(tmp_path / "truth.tif", truth, ["tree"]),
            "pred": _write(tmp_path / "pred.tif", pred, ["tree"]), "dir": tmp_path}


def test_missed_objects_are_scored_over_the_whole_extent(pair):
    """Failed before the fix: tree IoU 1.0, mIoU 1.0 (only the 2 predicted pixels were scored)."""
    from geors.evaluate.segmentation import evaluate_segmentation_files

    r = evaluate_segmentation_files(pair["pred"], pair["truth"])
    tree = r["classes"]["tree"]
    # hand-computed: TP 1, truth 25, predicted 2
    assert tree["iou"] == pytest.approx(1 / 26)
    assert tree["precision"] == pytest.approx(1 / 2)
    assert tree["recall"] == pytest.approx(1 / 25)
    assert tree["f1"] == pytest.approx(2 * 1 / (25 + 2))
    assert r["miou"] == pytest.approx(1 / 26)  # object classes only
    bg = r["classes"]["background"]  # truth 75, predicted 98, both 74
    assert (bg["truth_pixels"], bg["pred_pixels"]) == (75, 98)
    assert bg["iou"] == pytest.approx(74 / 99)
    assert r["miou_with_background"] == pytest.approx((1 / 26 + 74 / 99) / 2)
    assert r["pixel_accuracy"] == pytest.approx(75 / 100) and r["pixels"] == 100


def test_ignore_unlabelled_keeps_the_misses(pair):
    from geors.evaluate.segmentation import evaluate_segmentation_files

    r = evaluate_segmentation_files(pair["pred"], pair["truth"], ignore_unlabelled=True)
    tree = r["classes"]["tree"]
    # the false positive lies on an unlabelled pixel and leaves the score; the 24 misses do not
    assert tree["iou"] == pytest.approx(1 / 25) and tree["precision"] == 1.0 and r["pixels"] == 25
    assert "background" not in r["classes"]


def test_scene_footprint_leaves_out_nodata_only(pair):
    """With --scene only the scene's nodata pixels leave the score (column 9 here)."""
    from geors.evaluate.segmentation import evaluate_segmentation_files

    img = np.full((3, 10, 10), 100, np.uint8)
    img[:, :, 9] = 0
    scene = _write(pair["dir"] / "scene.tif", img, None, nodata=0)
    r = evaluate_segmentation_files(pair["pred"], pair["truth"], scene=scene)
    tree = r["classes"]["tree"]
    # the false positive at (9, 9) is on nodata now: TP 1, truth 25, predicted 1
    assert tree["iou"] == pytest.approx(1 / 25) and tree["precision"] == 1.0 and r["pixels"] == 90


def test_cli_reports_the_miss(pair):
    from geors.cli.main import main

    res = CliRunner().invoke(main, ["eval", "segmentation", str(pair["pred"]), str(pair["truth"])])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["miou"] == pytest.approx(1 / 26) and data["footprint"] == "every pixel of PRED's grid"
    res = CliRunner().invoke(main, ["eval", "segmentation", str(pair["pred"]), str(pair["truth"]),
                                    "--ignore-unlabelled"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["miou"] == pytest.approx(1 / 25)
