"""The scripts in examples/ run as documented, on tiny generated data (examples/demo_data.py).

Each example is imported and its ``main(argv)`` called in this process (what
``python examples/NAME.py ARGS`` does, without a second torch import). Those
that train a model are ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    sys.path.insert(0, str(EXAMPLES))  # the examples import demo_data from beside them
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ledger(gpkg: Path) -> dict[str, int]:
    with sqlite3.connect(gpkg) as con:
        return dict(con.execute("SELECT scene, COUNT(*) FROM geors_tiles GROUP BY scene").fetchall())


def srs_of(gpkg: Path, table: str) -> int:
    with sqlite3.connect(gpkg) as con:
        return con.execute("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = ?", (table,)).fetchone()[0]


def test_demo_data_writes_an_archive_in_two_crss_with_boxes_on_the_scenes(tmp_path):
    import rasterio

    from geors import open_scene, read_labels

    demo = load("demo_data")
    scenes = demo.write_archive(tmp_path / "a", n_scenes=2, size=96, objects=3)
    crss = set()
    for s in scenes:
        with rasterio.open(s) as ds:
            crss.add(ds.crs.to_string())
        labels = read_labels(str(s).replace(".tif", ".boxes.gpkg"), open_scene(s))  # EPSG:4326 -> scene pixels
        assert len(labels.boxes) == 3
        assert labels.boxes.min() >= 0 and labels.boxes.max() <= 96
    assert crss == {"EPSG:32617", "EPSG:3857"}


def test_archive_batch_run_writes_two_crss_into_one_geopackage(tmp_path, capsys):
    example = load("archive_batch_run")
    out = tmp_path / "archive.gpkg"
    summary = example.main(["--demo", str(tmp_path / "archive"), "--size", "96", "-o", str(out), "--sam", "box"])
    assert summary.status == "finished" and summary.scenes == 2 and summary.failed == 0
    assert summary.reprojected_scenes == ["scene_01.tif"]  # Web Mercator scene into the first scene's UTM
    assert set(ledger(out)) == {"scene_00.tif", "scene_01.tif"}
    assert srs_of(out, "detections") == 32617
    assert "finished: 2 scene(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_archive_batch_run_refuses_a_second_run_and_resumes(tmp_path):
    example = load("archive_batch_run")
    out = tmp_path / "archive.gpkg"
    example.main(["--demo", str(tmp_path / "archive"), "--size", "96", "-o", str(out), "--sam", "box"])
    with pytest.raises(SystemExit, match="already holds results"):
        example.main([str(tmp_path / "archive"), "-o", str(out), "--sam", "box"])
    again = example.main([str(tmp_path / "archive"), "-o", str(out), "--sam", "box", "--resume"])
    assert again.skipped_resume == 2 and again.done == 0


def test_local_cluster_example_runs_on_a_scheduler_address(tmp_path):
    pytest.importorskip("distributed")
    example = load("local_cluster")
    out = tmp_path / "cluster.gpkg"
    summary = example.main(["--demo", str(tmp_path / "c"), "--size", "96", "-o", str(out), "--own-cluster",
                            "--no-processes", "--workers", "2", "--threads", "1"])
    assert summary.status == "finished" and summary.scenes == 2 and summary.failed == 0
    assert set(ledger(out)) == {"scene_00.tif", "scene_01.tif"}


@pytest.mark.slow
def test_local_cluster_example_with_worker_processes(tmp_path):
    pytest.importorskip("distributed")
    example = load("local_cluster")
    out = tmp_path / "cluster.gpkg"
    summary = example.main(["--demo", str(tmp_path / "c"), "--size", "96", "-o", str(out), "--scheduler", "local",
                            "--workers", "2"])
    assert summary.status == "finished" and summary.failed == 0 and summary.processed == summary.tiles == 2



@pytest.mark.slow
def test_train_detector_on_labels_trains_detects_and_evaluates(tmp_path):
    from geors.models.registry import read_metadata

    example = load("train_detector_on_labels")
    work = tmp_path / "own"
    metrics = example.main(["--demo", "--work", str(work), "--size", "160"])
    meta = read_metadata(work / "model.safetensors")
    assert meta["classes"] == ["square"] and meta["tile_size"] == 128
    assert metrics["per_class"]["square"]["n_truth"] > 0
    assert json.loads((work / "metrics.json").read_text())["truth_class_field"] == "class"
    assert (work / "detections.gpkg").exists()


@pytest.mark.slow
def test_boxes_to_segmenter_labels_trains_and_segments(tmp_path):
    import rasterio

    example = load("boxes_to_segmenter")
    work = tmp_path / "samrs"
    metrics = example.main(["--demo", "--work", str(work), "--size", "160"])
    with rasterio.open(work / "labels.tif") as src, rasterio.open(work / "scene.tif") as scene:
        assert (src.width, src.height, src.crs) == (scene.width, scene.height, scene.crs)
    assert {"ground", "square"} <= set(metrics["classes"])
    assert metrics["miou"] is None or 0 <= metrics["miou"] <= 1  # None: a few demo steps may predict no class
    assert (work / "classes.tif").exists() and (work / "segmentation.gpkg").exists()


def test_examples_fail_with_one_message_on_bad_input(tmp_path):
    example = load("archive_batch_run")
    with pytest.raises(SystemExit, match="Error: "):
        example.main([str(tmp_path / "missing"), "-o", str(tmp_path / "x.gpkg")])
    assert not (tmp_path / "x.gpkg").exists()
