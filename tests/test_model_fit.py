"""A scene that does not fit the model is warned about before work starts; an empty result says what to try;
one class name per object class across the shipped models (issue 26.4)."""

from __future__ import annotations

import json
import logging

import numpy as np
import rasterio
from affine import Affine
from click.testing import CliRunner

from geors.cli.main import main


def _grey16(path, gsd=0.5, size=300):
    img = (np.random.default_rng(0).random((1, size, size)) * 3000 + 1000).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint16",
                       crs="EPSG:32617", transform=Affine(gsd, 0, 500_000, 0, -gsd, 4_500_000)) as ds:
        ds.write(img)
    return path


def _rgb8(path, gsd=0.1, size=300):
    img = (np.random.default_rng(1).random((3, size, size)) * 200 + 20).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(gsd, 0, 500_000, 0, -gsd, 4_500_000)) as ds:
        ds.write(img)
    return path


def test_scene_unlike_the_models_imagery_is_warned_about_before_work(tmp_path, caplog):
    """Failed before: a 1-band uint16 0.5 m scene ran through the 3-band uint8 0.1 m model without a word."""
    scene = _grey16(tmp_path / "grey.tif")
    out = tmp_path / "o.gpkg"
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), "--device", "cpu", "--progress", "none"])
    assert r.exit_code == 0, r.output
    text = caplog.text
    assert "one band, repeated into the 3 bands" in text
    assert "uint16 pixels" in text and "uint8 imagery" in text
    assert "0.5 m pixels" in text and "trained at 0.1 m" in text and "5.0x smaller" in text


def test_a_fitting_scene_gets_no_warning():
    from geors.models.registry import fit_warnings, get_model, read_metadata

    class Scene:
        path, band_indexes, dtype, gsd_m = "s.tif", (1, 2, 3), "uint8", 0.12

    assert fit_warnings(Scene(), read_metadata(get_model(None))) == []
    Scene.gsd_m = 0.4  # the segmenter was trained at 0.1-0.27 m: 0.4 is within the tolerance
    assert fit_warnings(Scene(), read_metadata(get_model("c2fnet-neon-dota"))) == []
    Scene.gsd_m = 0.6
    assert "0.6 m pixels" in fit_warnings(Scene(), read_metadata(get_model("c2fnet-neon-dota")))[0]


def test_a_run_that_finds_nothing_says_what_to_try(tmp_path):
    """Failed before: exit 0, 0 detections and no hint (only the all-gated case had one)."""
    scene = _rgb8(tmp_path / "rgb.tif")
    out = tmp_path / "o.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), "--device", "cpu", "--progress", "none",
                                  "--no-gate", "--score-threshold", "1.0"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["detections"] == 0 and summary["done"] > 0
    assert "--min-score" in summary["hints"][0] and "hint: no detection" in r.output


def test_class_names_keep_one_case_across_the_shipped_models():
    """Failed before: the detector said 'tree', the default segmenter 'Tree' (the legend showed both)."""
    from geors.models.registry import get_model, read_metadata

    det = read_metadata(get_model(None))["classes"]
    seg = read_metadata(get_model("c2fnet-neon-dota"))["classes"]
    assert "tree" in det and "tree" in seg and "Tree" not in seg
    assert len({c.lower() for c in det + seg}) == len(set(det + seg))


def test_a_refused_run_prints_only_its_refusal(tmp_path, caplog, monkeypatch):
    """Issue 26.6: the SAM warning (and the scene/model warnings) were printed by a command that then refused
    to run (here: the output already holds the scene). They now show only when the run goes ahead."""
    import geors.masks.factory as factory

    monkeypatch.delenv("GEORS_SAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("GEORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(factory, "_told_no_sam", False)
    scene = _rgb8(tmp_path / "rgb.tif", gsd=0.5)
    out = tmp_path / "o.gpkg"
    args = ["run", str(scene), "-o", str(out), "--device", "cpu", "--progress", "none", "--no-gate"]
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "no SAM checkpoint found" in caplog.text and "0.5 m pixels" in caplog.text  # the run went ahead
    caplog.clear()
    monkeypatch.setattr(factory, "_told_no_sam", False)
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "already holds results" in r.output
    assert "no SAM checkpoint" not in caplog.text + r.output and "0.5 m pixels" not in caplog.text + r.output
