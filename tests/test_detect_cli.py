"""`geors detect` / `geors run` end to end on generated scenes with a random-weight model file.

The weights are random, so what is checked is the plumbing: gate scores in the
ledger, every written box owned by its tile, CRS kept, instances linked to
detections, and bad input (bands, corrupt model) refused before the output is
touched.
"""

import json

import numpy as np
import pyogrio
import pytest
import torch
from click.testing import CliRunner

from geors.cli.main import main
from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.models.registry import save_model

import scenes


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    model = R2CNN(R2CNNConfig(num_classes=1, anchor_scales=[16.0, 32.0]))
    path = tmp_path_factory.mktemp("m") / "rand.safetensors"
    save_model(model, {"classes": ["blob"], "bands": 3, "tile_size": 256, "overlap": 64,
                       "gate_threshold": 0.0}, path)
    return path


def test_detect_writes_owned_boxes_and_ledger(tmp_path, random_model):
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), "--model", str(random_model),
                                  "--score-threshold", "0.0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    ledger = pyogrio.read_dataframe(out, layer="geors_tiles")
    assert len(ledger) == summary["tiles"] == 6  # 600x400 at 256/64: 3 x 2
    assert ledger["gate_score"].between(0, 1).all()
    det = pyogrio.read_dataframe(out, layer="detections")
    assert det.crs.to_epsg() == 32617
    assert summary["detections"] == len(det) > 0
    # each box centre lies in the core of the tile that wrote it
    from geors.raster import open_scene
    from geors.tiling import TileGrid
    sc = open_scene(scene)
    grid = {t.id: t for t in TileGrid(sc, 256, 64)}
    inv = ~sc.transform
    for tid, geom in zip(det["tile_id"], det.geometry, strict=True):
        x, y = inv @ (geom.centroid.x, geom.centroid.y)
        assert grid[tid].owns(x, y)
    runs = pyogrio.read_dataframe(out, layer="geors_runs")
    models = json.loads(runs["models"][0])
    # regression: the run record's model_sha256 was empty; it is the sha256 of the model file itself
    import hashlib
    assert models["model"] and models["model_sha256"] == hashlib.sha256(random_model.read_bytes()).hexdigest()


def test_run_with_box_masks_links_instances(tmp_path, random_model):
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    r = CliRunner().invoke(main, ["run", str(scene), "-o", str(out), "--model", str(random_model),
                                  "--score-threshold", "0.0", "--sam", "box", "--no-gate"])
    assert r.exit_code == 0, r.output
    det = pyogrio.read_dataframe(out, layer="detections", fid_as_index=True)
    inst = pyogrio.read_dataframe(out, layer="instances")
    assert len(det) > 0  # score threshold 0 and no gate: the random model writes boxes (empty output fails)
    assert len(inst) == len(det)
    assert sorted(inst["detection_fid"]) == sorted(det.index)  # one instance per detection
    assert set(inst["mask_method"]) == {"box"}
    # a box mask is its detection's rectangle on the pixel grid: within a pixel of it everywhere
    import rasterio
    with rasterio.open(scene) as ds:
        px = abs(ds.transform.a)
    for fid, geom in zip(inst["detection_fid"], inst.geometry, strict=True):
        assert geom.hausdorff_distance(det.geometry[fid]) <= px, fid


def test_bad_input_exit_2_and_output_untouched(tmp_path, random_model):
    out = tmp_path / "o.gpkg"
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    r = CliRunner()
    assert r.invoke(main, ["detect", str(scene), "-o", str(out), "--model", str(random_model)]).exit_code == 0
    before = out.read_bytes()
    four = tmp_path / "four.tif"
    scenes.write(four, np.zeros((4, 300, 300), np.uint8), "EPSG:32617",
                 __import__("affine").Affine(1, 0, 0, 0, -1, 0))
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(random_model.read_bytes()[:1000])
    for args, needle in [
        (["detect", str(four), "-o", str(out), "--model", str(random_model), "--bands", "1,2,3,4"], "band"),
        (["detect", str(scene), "-o", str(out), "--model", str(bad_model)], "bad.safetensors"),
        (["detect", str(scene), "-o", str(out), "--model", str(random_model), "--no-gate",
          "--gate-threshold", "0.5"], "exclude"),
        (["detect", str(tmp_path / "nope.tif"), "-o", str(out), "--model", str(random_model)], "nope.tif"),
    ]:
        res = r.invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output
    assert out.read_bytes() == before


def test_stage_loads_weights_once_per_process_even_when_unpickled(random_model, monkeypatch):
    import pickle

    from geors import stages
    from geors.detect import Detector

    calls = []
    real = Detector.load.__func__

    def counting(cls, *a, **k):
        calls.append(a)
        return real(cls, *a, **k)

    from geors import stage_contract as stage_mod
    from geors.config import DetectConfig

    monkeypatch.setattr(Detector, "load", classmethod(counting))
    monkeypatch.setattr(stage_mod, "_LOADED", {})
    stage = stages.DetectStage(DetectConfig(model=str(random_model)), device="cpu")
    for _ in range(3):  # what a Dask worker does with each task
        copy = pickle.loads(pickle.dumps(stage))
        assert "weights" not in str(copy.__dict__)
        assert copy.detector.classes == ["blob"]
    assert len(calls) == 1


def test_runs_into_the_same_file_are_never_mixed(tmp_path, random_model):
    """Regressions: a second run without --resume doubled every feature; --resume with other options, or
    with another raster of the same name, mixed both into one file (exit 0)."""
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    base = ["detect", str(scene), "-o", str(out), "--model", str(random_model), "--score-threshold", "0.0"]
    r = CliRunner()
    assert r.invoke(main, base).exit_code == 0
    n = len(pyogrio.read_dataframe(out, layer="detections"))
    before = out.read_bytes()
    res = r.invoke(main, base)
    assert res.exit_code == 2 and "--resume" in res.output and "--overwrite" in res.output
    res = r.invoke(main, [*base[:-1], "0.5", "--resume"])
    assert res.exit_code == 2 and "--score-threshold: was 0.0, now 0.5" in res.output
    other = tmp_path / "other" / "rgb.tif"
    other.parent.mkdir()
    scenes.rgb_uint8(other, 640, 400)
    res = r.invoke(main, ["detect", str(other), "-o", str(out), "--model", str(random_model), "--score-threshold",
                          "0.0", "--resume"])
    assert res.exit_code == 2 and "is not the raster" in res.output
    assert out.read_bytes() == before
    res = r.invoke(main, [*base, "--resume"])
    assert res.exit_code == 0 and json.loads(res.stdout.splitlines()[-1])["skipped_resume"] == 6
    res = r.invoke(main, [*base, "--overwrite"])
    assert res.exit_code == 0
    assert len(pyogrio.read_dataframe(out, layer="detections")) == n


def test_bad_options_are_refused_before_the_output_exists(tmp_path, random_model):
    """Regressions: --tile 0 became 640, --tile 100000 allocated 112 GiB, --batch-size 0 crashed,
    --score-threshold 2 wrote nothing, and refused options left an empty GeoPackage behind."""
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "new.gpkg"
    r = CliRunner()
    for opts, needle in [(["--tile", "0"], "--tile"), (["--tile", "100000"], "--tile"),
                         (["--batch-size", "0"], "--batch-size"), (["--score-threshold", "2"], "--score-threshold"),
                         (["--overlap", "-1"], "--overlap"), (["--tile", "256", "--overlap", "256"], "--overlap"),
                         (["--workers", "0"], "--workers"), (["--threads", "0"], "--threads"),
                         (["--crs", "EPSG:999999"], "--crs")]:
        res = r.invoke(main, ["detect", str(scene), "-o", str(out), "--model", str(random_model), *opts])
        assert res.exit_code == 2, (opts, res.output)
        assert needle in res.output, (opts, res.output)
        assert not out.exists() and not list(tmp_path.glob("*.gpkg*"))


def test_truncated_scene_is_refused_before_an_output_exists(tmp_path, random_model):
    """Regression: a truncated TIFF was refused only after an empty GeoPackage had been created (the stretch,
    which reads pixels, was estimated after the output was touched)."""
    good = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    cut = tmp_path / "cut.tif"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "new.gpkg"
    res = CliRunner().invoke(main, ["detect", str(cut), "-o", str(out), "--model", str(random_model), "--strict"])
    assert res.exit_code == 2 and "cut.tif" in res.output, res.output
    assert not out.exists() and not list(tmp_path.glob("*.gpkg*"))


def test_cli_environment_defaults_respect_the_user(monkeypatch):
    """The CLI (not the library) sets OpenMP passive waiting and GDAL's cache, unless the user set them."""
    import logging
    import os
    import subprocess
    import sys

    from geors.cli.main import configure_environment

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    configure_environment(logging.WARNING)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["GDAL_CACHEMAX"] == "64"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_environment(logging.WARNING)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    # set before anything imports torch (libgomp reads it when its thread pool starts)
    code = ("import sys, os; from geors.cli.main import main\n"
            "try:\n    main(['info', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stderr.strip().splitlines()[-1] == "PASSIVE False"


def test_detect_uses_the_models_calibrated_score_threshold(tmp_path, random_model):
    """Regression: `geors detect` wrote boxes >= 0.3 whatever the model; a model trained with empty
    negatives scores its true boxes lower, so `geors train` calibrates a threshold on its validation
    tiles (meta ``score_threshold``) and detect uses it unless --score-threshold is given."""
    from geors.models.registry import load_model, read_metadata

    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    everything = tmp_path / "all.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(everything), "--model", str(random_model),
                                  "--score-threshold", "0.0", "--device", "cpu", "--progress", "none"])
    assert r.exit_code == 0, r.output
    scores = np.sort(pyogrio.read_dataframe(everything, layer="detections")["score"].to_numpy())
    assert len(scores) > 10
    calibrated = float(np.round(np.quantile(scores, 0.5), 4))
    assert (scores >= calibrated).sum() != (scores >= 0.3).sum()  # the two defaults write different boxes
    model, _ = load_model(str(random_model), torch.device("cpu"))
    meta = read_metadata(random_model)
    cal_model = tmp_path / "calibrated.safetensors"
    save_model(model, {**{k: meta[k] for k in ("classes", "bands", "tile_size", "overlap", "gate_threshold")},
                       "score_threshold": calibrated}, cal_model)
    for extra, expected, threshold in (([], (scores >= calibrated).sum(), calibrated),
                                       (["--score-threshold", "0.3"], (scores >= 0.3).sum(), 0.3)):
        out = tmp_path / f"o{len(extra)}.gpkg"
        r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), "--model", str(cal_model),
                                      "--device", "cpu", "--progress", "none", *extra])
        assert r.exit_code == 0, r.output
        det = pyogrio.read_dataframe(out, layer="detections")
        assert len(det) == expected and (det["score"] >= threshold - 1e-6).all()
        models = json.loads(pyogrio.read_dataframe(out, layer="geors_runs")["models"][0])
        assert models["score_threshold"] == pytest.approx(threshold)
    # a model without a calibrated threshold keeps the documented default, 0.3
    out = tmp_path / "plain.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), "--model", str(random_model),
                                  "--device", "cpu", "--progress", "none"])
    assert r.exit_code == 0, r.output
    assert len(pyogrio.read_dataframe(out, layer="detections")) == (scores >= 0.3).sum()


def test_min_score_writes_low_scores_so_ap_is_not_capped(tmp_path, random_model):
    """Issue 25 ("what is written"): a layer written at the model's threshold caps AP; --min-score writes the
    boxes below it too (passes_threshold = 0, no outline), so AP over all scores can exceed the capped figure
    while F1/precision/recall at the model's threshold stay those of the boxes that pass. Failed before:
    --min-score did not exist."""
    import geopandas as gpd

    from geors.evaluate import evaluate_detection_files
    from geors.models.registry import load_model, read_metadata

    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    every = tmp_path / "every.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(every), "--model", str(random_model),
                                  "--score-threshold", "0.0", "--device", "cpu", "--progress", "none"])
    assert r.exit_code == 0, r.output
    det = pyogrio.read_dataframe(every, layer="detections")
    # a float32 value: scores are float32, so the model and the evaluator then compare them with it alike
    threshold = float(np.float32(np.quantile(det["score"], 0.75)))
    model, _ = load_model(str(random_model), torch.device("cpu"))
    meta = read_metadata(random_model)
    cal = tmp_path / "cal.safetensors"
    save_model(model, {**{k: meta[k] for k in ("classes", "bands", "tile_size", "overlap", "gate_threshold")},
                       "score_threshold": threshold}, cal)
    # truth: every other box below the threshold and every other box above it
    low, high = det[det["score"] < threshold], det[det["score"] >= threshold]
    truth = gpd.GeoDataFrame(geometry=list(low.geometry[::2]) + list(high.geometry[::2]), crs=det.crs)
    truth_path = tmp_path / "truth.gpkg"
    truth.to_file(truth_path)

    capped, full = tmp_path / "capped.gpkg", tmp_path / "full.gpkg"
    for out, extra in ((capped, []), (full, ["--min-score", "0.0"])):
        r = CliRunner().invoke(main, ["run", str(scene), "-o", str(out), "--model", str(cal), "--sam", "box",
                                      "--device", "cpu", "--progress", "none", *extra])
        assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    written = pyogrio.read_dataframe(full, layer="detections", fid_as_index=True)
    assert len(written) == len(det) and summary["below_threshold"] == len(low) > 0
    assert ((written["score"] >= threshold) == (written["passes_threshold"] == 1)).all()
    inst = pyogrio.read_dataframe(full, layer="instances")
    assert len(inst) == len(high)
    assert set(inst["detection_fid"]) == set(written.index[written["passes_threshold"] == 1])
    assert (pyogrio.read_dataframe(capped, layer="detections")["passes_threshold"] == 1).all()

    # the same boxes pass in both layers (scores tie at the threshold here: "at least" in the model as well)
    assert (sorted(pyogrio.read_dataframe(capped, layer="detections")["score"])
            == sorted(written.loc[written["passes_threshold"] == 1, "score"]))
    a = evaluate_detection_files(capped, truth_path)
    b = evaluate_detection_files(full, truth_path)
    assert a["score_threshold"] == b["score_threshold"] == pytest.approx(threshold)
    assert a["score_threshold_from"] == "the run record"
    assert b["overall"]["AP50"] > a["overall"]["AP50"]  # AP over every score exceeds the capped figure
    assert b["overall"]["max_recall"] == 1.0 > a["overall"]["max_recall"]
    for k in ("f1", "precision", "recall", "tp", "fp"):
        assert a["overall"][k] == b["overall"][k]
    assert any("capped" in w for w in a["warnings"]) and not any("capped" in w for w in b["warnings"])


def test_min_score_above_the_threshold_is_refused(tmp_path, random_model):
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 300, 300)
    out = tmp_path / "o.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), "--model", str(random_model),
                                  "--score-threshold", "0.3", "--min-score", "0.5", "--progress", "none"])
    assert r.exit_code == 2 and "--min-score" in r.output and not out.exists()
