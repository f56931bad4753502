"""Detection metrics against hand-computed values; gate metrics; `geors eval detections` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from geors.evaluate import (
    average_precision,
    box_iou,
    evaluate_detection_files,
    evaluate_detections,
    evaluate_gate,
)

GT = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
FAR = [50, 50, 60, 60]


def run(pred_boxes, scores, truth=GT, pred_classes=None, truth_classes=None, **kw):
    pred = {"boxes": np.asarray(pred_boxes, dtype=float), "scores": scores,
            "classes": pred_classes if pred_classes is not None else ["t"] * len(scores)}
    tr = {"boxes": truth, "classes": truth_classes if truth_classes is not None else ["t"] * len(truth)}
    return evaluate_detections(pred, tr, **kw)


def test_box_iou():
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0]])


def test_matching_uses_the_box_iou_rule():
    """The R-tree pairs that matching scores carry box_iou's values, and box_iou is torchvision's for real boxes."""
    import torch
    import torchvision.ops

    from geors.evaluate.detections import _overlapping_pairs

    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.hstack([xy, xy + rng.uniform(1, 40, (300, 2))])
    a, b = boxes[:120], boxes[120:]
    ia, ib, iou = _overlapping_pairs(a, b)
    full = box_iou(a, b)
    assert len(ia) == int((full > 0).sum()) > 0
    np.testing.assert_allclose(iou, full[ia, ib])
    np.testing.assert_allclose(full, torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy())


def test_perfect_predictions():
    r = run(GT, [0.9, 0.8])
    o = r["overall"]
    assert o["AP"] == pytest.approx(1.0) and o["AP50"] == pytest.approx(1.0)
    assert o["recall"] == 1.0 and o["precision"] == 1.0
    assert (o["tp"], o["fp"], o["fn"]) == (2, 0, 0)


def test_false_positive_ranked_first():
    # Ranked: FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the
    # interpolated precision is 2/3 at every recall level -> AP = 2/3.
    r = run([FAR, GT[0], GT[1]], [0.9, 0.8, 0.7])
    assert r["overall"]["AP50"] == pytest.approx(2 / 3)
    assert r["overall"]["AP"] == pytest.approx(2 / 3)
    assert r["overall"]["precision"] == pytest.approx(2 / 3)


def test_false_positive_ranked_second():
    # Ranked: TP, FP, TP -> interpolated precision 1 for recall 0..0.50 (51
    # points) and 2/3 for 0.51..1.00 (50 points).
    r = run([GT[0], FAR, GT[1]], [0.9, 0.8, 0.7])
    assert r["overall"]["AP50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_duplicates_count_as_false_positives():
    # Second box on the same truth ranks above the true detection of GT[1].
    r = run([GT[0], GT[0] + 0.5, GT[1]], [0.9, 0.8, 0.7])
    assert r["overall"]["fp"] == 1 and r["overall"]["tp"] == 2
    assert r["overall"]["AP50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_missed_truth_and_score_threshold():
    # One truth found with score 0.2 (below the default 0.3) -> recall 0 but AP and max_recall count it.
    r = run([GT[0]], [0.2])
    o = r["overall"]
    assert r["score_threshold"] == 0.3
    assert o["recall"] == 0.0 and o["precision"] is None and o["n_pred_above_threshold"] == 0
    assert o["max_recall"] == 0.5 and r["per_class"]["t"]["max_recall"] == 0.5
    # recall reaches 0.5 with precision 1 -> 51 of 101 points.
    assert o["AP50"] == pytest.approx(51 / 101)
    r = run([GT[0]], [0.2], score_threshold=0.1)
    assert r["overall"]["recall"] == 0.5 and r["overall"]["precision"] == 1.0


def test_default_score_threshold_is_the_one_detect_keeps():
    from geors.cli.eval import detections_command
    from geors.config import DEFAULT_SCORE_THRESHOLD

    # the CLI's default is the threshold PRED was written with (test_detect_cli checks a geors file);
    # the function's default, for other predictions, is detect's documented default
    opt = next(p for p in detections_command.params if p.name == "score_threshold")
    assert opt.default is None and DEFAULT_SCORE_THRESHOLD == 0.3
    assert run([GT[0]], [0.3])["overall"]["recall"] == 0.5


def test_f1_against_hand_computed_counts():
    # 3 truths; detections TP (0.9), FP (0.8), TP (0.7), FP (0.2): at 0.5, TP 2, FP 1, FN 1
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)
    r = run([[0, 0, 10, 10], FAR, [20, 20, 30, 30], [70, 70, 80, 80]], [0.9, 0.8, 0.7, 0.2], truth=truth,
            score_threshold=0.5)
    o = r["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (2, 1, 1)
    assert o["precision"] == pytest.approx(2 / 3) and o["recall"] == pytest.approx(2 / 3)
    assert o["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1)) == r["per_class"]["t"]["f1"]


def test_max_recall_ignores_scores_but_not_duplicates():
    r = run([GT[0], GT[0], FAR], [0.01, 0.9, 0.5])
    assert r["overall"]["max_recall"] == 0.5 and r["overall"]["tp"] == 1


def test_coco_ap_averages_iou_thresholds():
    # IoU of the shifted box with GT[0] is 8*10 / (2*100 - 80) = 2/3: a match
    # at thresholds 0.50..0.65 (4 of 10), a miss above.
    shifted = GT[0] + [2, 0, 2, 0]
    r = run([shifted, GT[1]], [0.9, 0.8])
    assert box_iou([shifted], [GT[0]])[0, 0] == pytest.approx(2 / 3)
    assert r["overall"]["AP50"] == pytest.approx(1.0)
    # At high thresholds: FP then TP -> AP 0.5 (precision 1/2 at all recalls up to 0.5, then 0).
    high = (51 * 0.5) / 101
    assert r["overall"]["AP"] == pytest.approx((4 * 1.0 + 6 * high) / 10)
    r75 = run([shifted, GT[1]], [0.9, 0.8], match_iou=0.75)
    assert r75["overall"]["recall"] == 0.5


def test_per_class_and_mean_over_classes():
    truth = np.array([GT[0], GT[1], [40, 40, 50, 50]])
    r = run([GT[0], GT[1], FAR], [0.9, 0.8, 0.95], truth=truth,
            pred_classes=["a", "b", "b"], truth_classes=["a", "b", "b"])
    pc = r["per_class"]
    assert pc["a"]["AP50"] == pytest.approx(1.0)
    # class b: FP (0.95) then TP (0.8) for 2 truths -> precision 1/2 up to recall 0.5.
    assert pc["b"]["AP50"] == pytest.approx(51 * 0.5 / 101)
    assert r["overall"]["AP50"] == pytest.approx((1.0 + 51 * 0.5 / 101) / 2)
    assert pc["b"]["fn"] == 1 and r["overall"]["n_truth"] == 3
    # A class that only the model predicts has no AP and is left out of the mean.
    r2 = run([GT[0], GT[1]], [0.9, 0.8], pred_classes=["t", "ghost"], truth_classes=["t", "t"])
    assert r2["per_class"]["ghost"]["AP"] is None
    assert r2["overall"]["AP50"] == pytest.approx(r2["per_class"]["t"]["AP50"])


def test_wrong_class_does_not_match_unless_agnostic():
    r = run(GT, [0.9, 0.8], pred_classes=["x", "x"])
    assert r["per_class"]["t"]["AP50"] == 0.0
    r = run(GT, [0.9, 0.8], pred_classes=["x", "x"], class_agnostic=True)
    assert r["overall"]["AP50"] == pytest.approx(1.0)


def test_images_do_not_match_across():
    pred = {"boxes": GT, "scores": [0.9, 0.8], "classes": ["t", "t"], "images": ["a", "b"]}
    truth = {"boxes": GT, "classes": ["t", "t"], "images": ["b", "a"]}
    assert evaluate_detections(pred, truth)["overall"]["tp"] == 0


def test_average_precision_edge_cases():
    assert np.isnan(average_precision(np.zeros(0, bool), np.zeros(0), 0))
    assert average_precision(np.zeros(0, bool), np.zeros(0), 3) == 0.0


def test_many_boxes_match_bruteforce_counts():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 2000, (400, 2))
    truth = np.concatenate([xy, xy + 12], axis=1)
    noise = rng.normal(0, 2, truth.shape)
    pred = np.concatenate([truth[:300] + noise[:300], rng.uniform(0, 2000, (100, 2)).repeat(2, 1)[:, [0, 1, 0, 1]]
                           + [0, 0, 12, 12]])
    scores = rng.uniform(0, 1, len(pred))
    r = run(pred, scores, truth=truth, pred_classes=["t"] * len(pred), truth_classes=["t"] * len(truth),
            score_threshold=0.0)
    iou = box_iou(pred, truth)
    # Greedy reference with a dense IoU matrix.
    taken = np.zeros(len(truth), bool)
    tp = 0
    for i in np.argsort(-scores, kind="mergesort"):
        cand = np.where(taken, -1, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= 0.5:
            taken[j] = True
            tp += 1
    assert r["overall"]["tp"] == tp


def test_gate_metrics():
    g = evaluate_gate([0.9, 0.2, 0.7, 0.1, 0.6], [True, True, False, False, True], threshold=0.5)
    assert (g["tp"], g["fp"], g["fn"], g["tn"]) == (2, 1, 1, 1)
    assert g["recall"] == pytest.approx(2 / 3)
    assert g["precision"] == pytest.approx(2 / 3)
    assert g["pass_rate"] == pytest.approx(3 / 5)
    g = evaluate_gate([0.1, 0.2], [False, False], threshold=0.5)
    assert g["recall"] is None and g["precision"] is None and g["pass_rate"] == 0.0


# ----------------------------------------------------------------------------- files and CLI


@pytest.fixture()
def files(tmp_path):
    """A scene in EPSG:32617, geors-style detections, truth as GeoJSON in WGS84 and as VOC XML."""
    import geopandas as gpd
    import rasterio
    from affine import Affine
    from shapely.geometry import box

    ox, oy, res = 500_000.0, 4_500_000.0, 0.5
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=200, height=100, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(res, 0, ox, 0, -res, oy)) as ds:
        ds.write(np.zeros((3, 100, 200), np.uint8))

    def geo(b):
        return box(ox + b[0] * res, oy - b[3] * res, ox + b[2] * res, oy - b[1] * res)

    truth_px = [[10, 10, 30, 30], [100, 40, 130, 70], [150, 10, 170, 30]]
    pred_px = [[10, 10, 30, 30], [101, 41, 131, 71], [60, 60, 80, 80]]
    pred = gpd.GeoDataFrame({"class": ["Tree"] * 3, "class_id": [0] * 3, "score": [0.9, 0.8, 0.7],
                             "scene": ["scene.tif"] * 3}, geometry=[geo(b) for b in pred_px], crs=32617)
    pred_path = tmp_path / "pred.gpkg"
    pred.to_file(pred_path, layer="detections")
    truth = gpd.GeoDataFrame({"label": ["Tree"] * 3}, geometry=[geo(b) for b in truth_px], crs=32617)
    truth_path = tmp_path / "truth.geojson"
    truth.to_crs(4326).to_file(truth_path)
    voc = tmp_path / "truth.xml"
    voc.write_text("<annotation><filename>scene.tif</filename>" + "".join(
        f"<object><name>Tree</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for b in truth_px) + "</annotation>")
    return {"scene": scene, "pred": pred_path, "truth": truth_path, "voc": voc, "dir": tmp_path}


def test_files_geojson_truth_in_other_crs(files):
    r = evaluate_detection_files(files["pred"], files["truth"])
    o = r["overall"]
    # 2 of 3 matched (the 1-px shift keeps IoU ~0.88; reprojection inflates the truth box slightly).
    assert (o["tp"], o["fp"], o["fn"]) == (2, 1, 1)
    assert o["AP50"] == pytest.approx((67 * 1.0) / 101)  # TP, TP, FP over 3 truths: precision 1 up to 2/3
    assert r["per_class"].keys() == {"Tree"}


def test_files_truth_without_class_field_is_class_agnostic(files):
    import geopandas as gpd

    t = gpd.read_file(files["truth"]).drop(columns=["label"])
    path = files["dir"] / "noclass.gpkg"
    t.to_file(path)
    r = evaluate_detection_files(files["pred"], path)
    assert r["class_agnostic"] is True and r["overall"]["tp"] == 2
    r = evaluate_detection_files(files["pred"], path, class_agnostic=False)
    assert r["class_agnostic"] is True and r["overall"]["tp"] == 2


def test_files_class_names_differing_in_case_still_match(files):
    import geopandas as gpd

    t = gpd.read_file(files["truth"])
    t["label"] = "tree"
    path = files["dir"] / "lower.gpkg"
    t.to_file(path)
    r = evaluate_detection_files(files["pred"], path)
    assert r["overall"]["tp"] == 2 and r["warnings"]
    t["label"] = "car"
    t.to_file(path)
    r = evaluate_detection_files(files["pred"], path)
    assert r["overall"]["tp"] == 0 and "no predicted class" in r["warnings"][0]


def test_files_voc_truth_needs_scene(files):
    from geors.errors import LabelError

    with pytest.raises(LabelError, match="truth.xml.*--scene"):
        evaluate_detection_files(files["pred"], files["voc"])
    r = evaluate_detection_files(files["pred"], files["voc"], scene=files["scene"])
    assert (r["overall"]["tp"], r["overall"]["fp"]) == (2, 1)


def test_gate_metrics_from_geors_ledger(files, tmp_path):
    import shapely
    from rasterio.windows import Window

    from geors.raster import open_scene
    from geors.results import Detection, TileResult
    from geors.vector import GeoPackageWriter

    sc = open_scene(files["scene"])
    out = tmp_path / "run.gpkg"
    # Two tiles: left (x 0..100) holds truth 1, right (x 100..200) holds truths 2 and 3.
    # The right tile is gated out (score 0.3) -> gate recall 1/2.
    geom = shapely.box(*sc.transform * (10, 30), *sc.transform * (30, 10))
    results = [
        TileResult(scene=sc.name, tile_id="r0_c0", window=Window(0, 0, 100, 100), status="done", gate_score=0.9,
                   detections=[Detection(geometry=geom, class_name="Tree", class_id=0, score=0.9, gate_score=0.9)]),
        TileResult(scene=sc.name, tile_id="r0_c1", window=Window(100, 0, 100, 100), status="gated", gate_score=0.3),
    ]
    with GeoPackageWriter(out, sc.crs) as w:
        w.write_results(results)
    r = evaluate_detection_files(out, files["truth"], scene=files["scene"])
    assert r["gate"]["recall"] == 0.5 and r["gate"]["precision"] == 1.0 and r["gate"]["n_tiles"] == 2
    assert r["overall"]["tp"] == 1 and r["overall"]["fn"] == 2
    r = evaluate_detection_files(out, files["truth"], scene=files["scene"], gate_threshold=0.2)
    assert r["gate"]["recall"] == 1.0 and r["gate"]["threshold"] == 0.2


def test_cli_eval_detections(files):
    from geors.cli.main import main

    runner = CliRunner()
    out_json = files["dir"] / "m.json"
    res = runner.invoke(main, ["eval", "detections", str(files["pred"]), str(files["truth"]), "-o", str(out_json)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["overall"]["tp"] == 2
    assert json.loads(out_json.read_text()) == data
    gpkg_truth = files["dir"] / "truth.gpkg"
    import geopandas as gpd

    gpd.read_file(files["truth"]).to_file(gpkg_truth)
    res = runner.invoke(main, ["eval", "detections", str(files["pred"]), str(gpkg_truth), "--iou", "0.95",
                               "--score-threshold", "0.75"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["match_iou"] == 0.95 and data["score_threshold"] == 0.75
    assert data["overall"]["n_pred_above_threshold"] == 2


def test_cli_eval_bad_input_exit_2(files):
    from geors.cli.main import main

    runner = CliRunner()
    res = runner.invoke(main, ["eval", "detections", str(files["pred"]), str(files["dir"] / "missing.gpkg")])
    assert res.exit_code == 2
    assert "missing.gpkg" in res.output and "not found" in res.output
    res = runner.invoke(main, ["eval", "detections", str(files["dir"] / "nope.gpkg"), str(files["truth"])])
    assert res.exit_code == 2 and "nope.gpkg" in res.output
    res = runner.invoke(main, ["eval", "detections", str(files["pred"]), str(files["truth"]),
                               "--class-field", "kind"])
    assert res.exit_code == 2 and "available fields: label" in res.output
