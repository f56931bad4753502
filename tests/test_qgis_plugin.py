"""The QGIS plugin (qgis_plugin/geors_qgis) in a real, headless QGIS.

QGIS's Python is the system interpreter (``/usr/bin/python3`` with ``python3-qgis``),
not the one running these tests, which has geors and torch. So each ``qgis`` test
runs tests/qgis_harness.py with QGIS's Python (``QT_QPA_PLATFORM=offscreen``) and
points the plugin at this interpreter through ``$GEORS_PYTHON``, the way a user
points it at their geors environment. The tests skip when QGIS is not installed.

The tests at the bottom need no QGIS: the subprocess runner and the environment
lookup are standard-library modules, and ``geors models info --json`` is what the
plugin reads its defaults from.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

import scenes
from fake_feedback import FakeFeedback

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("qgis_harness.py")
QGIS_PYTHON = os.environ.get("GEORS_QGIS_PYTHON", "/usr/bin/python3")
sys.path.insert(0, str(REPO / "qgis_plugin"))

# The plugin's own settings: what the algorithms pass for a deterministic, quick detection run.
DETECT_ARGS = ["--no-gate", "--score-threshold", "0.05", "--tile", "256", "--overlap", "64", "--device", "cpu",
               "--batch-size", "1"]


GEORS_MAIN = "import sys; from geors.cli.main import main; sys.exit(main(prog_name='geors'))"


@functools.lru_cache(maxsize=1)
def _qgis_missing() -> str | None:
    try:
        r = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QGIS_PYTHON} does not run ({exc})"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [""])[-1]
        return f"{QGIS_PYTHON} cannot import qgis (apt-get install qgis python3-qgis): {last}"
    return None


@pytest.fixture
def qgis():
    reason = _qgis_missing()
    if reason:
        pytest.skip(reason)


def harness(case: str, *args: str, env: dict | None = None, timeout: float = 300) -> dict:
    """Run one harness case in QGIS's Python and return its RESULT json."""
    full_env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "GEORS_PYTHON": sys.executable}
    full_env.pop("PYTHONPATH", None)
    if env:
        full_env.update(env)
    full_env = {k: v for k, v in full_env.items() if v is not None}
    r = subprocess.run([QGIS_PYTHON, str(HARNESS), case, *args], capture_output=True, text=True, timeout=timeout,
                       env=full_env, cwd=REPO)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"harness {case} gave no result (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    data = json.loads(lines[-1][len("RESULT "):])
    assert "exception" not in data, data.get("traceback")
    return data


def crown_polygons(width: int, height: int, seed: int = 5) -> list:
    """The discs of :func:`crowns_scene` (same seed and size) as polygons in its CRS."""
    from shapely.geometry import Point

    rng = np.random.default_rng(seed)
    for lo, hi in ((60, 90), (90, 120), (40, 70)):
        rng.integers(lo, hi, (height, width))
    out = []
    for _ in range(width * height // 10000):
        cy, cx, r = rng.integers(20, height - 20), rng.integers(20, width - 20), rng.integers(6, 14)
        rng.integers(110, 160)
        out.append(Point(404000.0 + (cx + 0.5) * 0.1, 3285000.0 - (cy + 0.5) * 0.1).buffer(r * 0.1))
    return out


def crowns_scene(path: Path, width: int, height: int, seed: int = 5) -> Path:
    """Green-ish uint8 RGB at 0.1 m in UTM 17N with dark-edged bright discs (tree-crown-like blobs)."""
    rng = np.random.default_rng(seed)
    data = np.empty((3, height, width), np.uint8)
    for b, (lo, hi) in enumerate(((60, 90), (90, 120), (40, 70))):
        data[b] = rng.integers(lo, hi, (height, width))
    yy, xx = np.mgrid[:height, :width]
    for _ in range(width * height // 10000):
        cy, cx, r = rng.integers(20, height - 20), rng.integers(20, width - 20), rng.integers(6, 14)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        data[0][disc], data[1][disc], data[2][disc] = 30, rng.integers(110, 160), 30
    return scenes.write(path, data, CRS.from_epsg(32617), Affine(0.1, 0, 404000.0, 0, -0.1, 3285000.0))


@pytest.fixture(scope="module")
def scene_and_reference(tmp_path_factory):
    """A 12-tile scene (at 256/64 px) and the CLI's own detections on it, to compare the plugin with."""
    if _qgis_missing():
        pytest.skip(_qgis_missing())
    d = tmp_path_factory.mktemp("qgis")
    scene = crowns_scene(d / "crowns.tif", 768, 512)
    ref = d / "reference.gpkg"
    r = subprocess.run([sys.executable, "-c", GEORS_MAIN, "detect", str(scene), "-o", str(ref), *DETECT_ARGS],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return scene, ref


def _reference_boxes(ref: Path) -> list[list[float]]:
    import pyogrio

    df = pyogrio.read_dataframe(ref, layer="detections")
    return sorted([round(b[0], 3), round(b[1], 3)] for b in df.geometry.bounds.values.tolist())


@pytest.mark.qgis
def test_provider_lists_algorithms(qgis):
    res = harness("list")
    algs = res["algorithms"]
    for alg_id in ("geors:run", "geors:detect", "geors:masks", "geors:label", "geors:train_detector",
                   "geors:train_segmenter", "geors:info", "geors:tiles", "geors:check_installation"):
        assert alg_id in algs
    # 'Segment scene' only when this geors has the command
    help_text = subprocess.run([sys.executable, "-c", GEORS_MAIN, "--help"],
                               capture_output=True, text=True).stdout
    assert ("geors:segment" in algs) == ("\n  segment " in help_text)
    if "geors:segment" in algs:  # its parameters come from `geors segment --help`, one per option
        from geors_qgis.environment import parse_help_options

        seg_help = subprocess.run([sys.executable, "-c", GEORS_MAIN, "segment", "--help"], capture_output=True,
                                  text=True).stdout
        names = {o["flag"].lstrip("-").replace("-", "_").upper() for o in parse_help_options(seg_help)}
        assert names <= set(res["parameters"]["geors:segment"]) | {"HELP"}
    assert res["provider"].startswith("geors (") and "not found" not in res["provider"]
    # one parameter per option of the installed CLI (except those the algorithm sets itself)
    from geors_qgis.environment import describe, find_environment

    cli = describe(find_environment(sys.executable))
    own = {"--output", "--progress", "--help", "--boxes", "--layer", "--instances", "--json", "--scene", "--labels",
           "--labelled-area",
           "--corrections", "--reviewed-area"}  # train detector: set by Retrain from corrections, not Train detector
    for alg_id, cmd in (("geors:run", "run"), ("geors:detect", "detect"), ("geors:masks", "masks"),
                        ("geors:label", "label"), ("geors:info", "info"), ("geors:tiles", "tiles"),
                        ("geors:train_detector", "train detector"), ("geors:train_segmenter", "train segmenter")):
        flags = {p["flag"] for p in cli[cmd]["params"] if p.get("flag") and p["flag"] not in own}
        names = {f.lstrip("-").replace("-", "_").upper() for f in flags}
        assert names <= set(res["parameters"][alg_id]), (alg_id, names - set(res["parameters"][alg_id]))
    # defaults from the model metadata
    assert {"SCORE_THRESHOLD", "NO_GATE", "GATE_THRESHOLD", "RESUME", "SAM"} <= set(res["parameters"]["geors:run"])
    assert res["defaults"]["TILE"] == 640 and res["defaults"]["OVERLAP"] == 128
    assert 0 < res["defaults"]["GATE_THRESHOLD"] < 1
    # the fields as QGIS builds them (regression: --max-minutes etc. were text fields, --sam free text without
    # watershed, --small-classes optional, no Train segmenter at all)
    fields = res["fields"]
    for alg_id in ("geors:train_detector", "geors:train_segmenter"):
        budget = fields[alg_id]["MAX_MINUTES"]
        assert budget["type"] == "number" and budget["default"] == 10.0, (alg_id, budget)
    seg = fields["geors:train_segmenter"]
    assert seg["SMALL_CLASSES"]["optional"] is False and seg["LABELLED_AREA"]["optional"] is True
    assert seg["UNLABELLED"]["options"] == ["auto", "background", "ignore"] and "BACKGROUND" in seg
    for alg_id in ("geors:run", "geors:masks", "geors:label"):
        sam = fields[alg_id]["SAM"]
        assert sam["type"] == "enum" and sam["default"] == "auto" and "watershed" in sam["options"], sam
        assert fields[alg_id]["SAM_CHECKPOINT"]["optional"] is True
    for alg_id in ("geors:run", "geors:detect"):
        assert fields[alg_id]["MIN_SCORE"]["type"] == "number"


@pytest.mark.qgis
def test_detect_matches_cli(qgis, scene_and_reference, tmp_path):
    scene, ref = scene_and_reference
    out = tmp_path / "plugin.gpkg"
    res = harness("detect", str(scene), str(out))
    layer = res["layer"]
    assert layer["valid"] and layer["crs"] == "EPSG:32617"
    assert {"class", "score", "gate_score", "tile_id", "run_id"} <= set(layer["fields"])
    reference = _reference_boxes(ref)
    assert layer["count"] == len(reference) > 0
    assert layer["boxes"] == reference
    assert res["progress_max"] == pytest.approx(100.0)
    assert any(line.startswith("command: ") and "--progress jsonl" in line for line in res["log"])


@pytest.mark.qgis
def test_cancel_leaves_resumable_geopackage(qgis, scene_and_reference, tmp_path):
    scene, ref = scene_and_reference
    out = tmp_path / "cancelled.gpkg"
    res = harness("cancel", str(scene), str(out))
    msg = res["message"]
    assert msg and "Cancelled" in msg and "--resume" in msg and str(out) in msg
    with sqlite3.connect(out) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = db.execute("SELECT count(*) FROM geors_tiles").fetchone()[0]
        status = db.execute("SELECT status FROM geors_runs").fetchall()
    with sqlite3.connect(ref) as db:
        n_tiles = db.execute("SELECT count(*) FROM geors_tiles").fetchone()[0]
    assert 0 <= done < n_tiles
    assert status == [("cancelled",)]
    resumed = harness("resume", str(scene), str(out))
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT count(*) FROM geors_tiles").fetchone()[0] == n_tiles
    assert resumed["layer"]["boxes"] == _reference_boxes(ref)


@pytest.mark.qgis
def test_masks_and_label_from_box_layer(qgis, scene_and_reference, tmp_path):
    scene, ref = scene_and_reference
    res = harness("boxes", str(scene), str(ref), str(tmp_path))
    inst = res["instances"]
    assert inst["valid"] and inst["crs"] == "EPSG:32617" and inst["count"] == res["boxes"] > 0
    assert res["label_valid"] and res["label_crs"] == "EPSG:32617" and res["label_size"] == [768, 512]
    assert res["label_renderer"] == "paletted" and res["label_classes"] == ["tree"]


@pytest.mark.qgis
def test_scene_info_and_tile_grid(qgis, tmp_path):
    scene = crowns_scene(tmp_path / "s.tif", 768, 512)
    res = harness("scene", str(scene), str(tmp_path / "tiles.gpkg"))
    assert res["info"]["width"] == 768 and res["info"]["height"] == 512
    assert res["tiles"]["crs"] == res["cores"]["crs"] == "EPSG:32617"
    assert res["tiles"]["count"] == res["cores"]["count"] == 12  # 4 x 3 tiles of 256 px, stride 192


@pytest.mark.qgis
def test_results_loaded_styled_and_grouped(qgis, tmp_path):
    scene = crowns_scene(tmp_path / "small.tif", 384, 256)
    res = harness("load", str(scene), str(tmp_path / "run.gpkg"))
    (name, layers), = res["groups"].items()
    assert name.startswith("geors run: small")
    assert [lyr[0] for lyr in layers] == ["detections", "instances"]
    (_, det_renderer, det_crs, rules), (_, renderer, crs, categories) = layers
    assert renderer == "categorizedSymbol" and crs == "EPSG:32617" and "tree" in categories
    # detections: one rule per class for boxes that pass the score threshold, one unticked grey rule for
    # those written below it (--min-score), so AP can use them without their showing by default
    assert det_renderer == "RuleRenderer" and det_crs == "EPSG:32617"
    assert ["tree", True] in rules and rules[-1] == ["below the score threshold (kept for AP; tick to show)", False]
    # run with --min-score 0.01 below --score-threshold 0.3: every box falls under exactly one rule, and the
    # unticked rule draws exactly the boxes written below the threshold
    counts = res["rule_counts"]
    assert counts["below the score threshold (kept for AP; tick to show)"] == counts["below"] > 0
    assert counts["tree"] + counts["below"] == counts["layer"]


@pytest.mark.qgis
def test_training_algorithms_run_with_a_time_budget(qgis, tmp_path):
    """Train detector and Train segmenter in QGIS with MAX_MINUTES 0.25: the budget and the segmenter's
    labelled area reach the command line, the models are written, and the task shows steps and time left."""
    import geopandas as gpd
    from shapely.geometry import box

    scene = crowns_scene(tmp_path / "train.tif", 768, 512)
    discs = crown_polygons(768, 512)
    gpd.GeoDataFrame({"class": ["tree"] * len(discs)}, geometry=discs, crs=32617).to_file(tmp_path / "poly.gpkg")
    gpd.GeoDataFrame({"class": ["tree"] * len(discs)}, geometry=[box(*d.bounds) for d in discs],
                     crs=32617).to_file(tmp_path / "boxes.gpkg")
    gpd.GeoDataFrame(geometry=[box(404000.0, 3285000.0 - 51.2, 404000.0 + 76.8, 3285000.0)],
                     crs=32617).to_file(tmp_path / "area.gpkg")
    res = harness("train", str(scene), str(tmp_path / "boxes.gpkg"), str(tmp_path / "poly.gpkg"),
                  str(tmp_path / "area.gpkg"), str(tmp_path), timeout=600)
    det, seg = res["geors:train_detector"], res["geors:train_segmenter"]
    assert Path(det["output"]).is_file() and Path(seg["output"]).is_file()
    assert det["summary"]["classes"] == ["tree"] and "validation_F1" in det["summary"]
    assert seg["summary"]["classes"] == ["background", "tree"] and seg["summary"]["small_classes"] == ["tree"]
    assert "--max-minutes 0.25" in det["commands"][0] and "--progress jsonl" in det["commands"][0]
    assert "--max-minutes 0.25" in seg["commands"][0] and "--labelled-area" in seg["commands"][0]
    assert "--small-classes tree" in seg["commands"][0]
    assert any(t.startswith("training: step ") and t.endswith(" left") for t in det["texts"]), det["texts"]
    assert any(" step " in t and t.endswith(" left") for t in seg["texts"]), seg["texts"]
    assert det["progress_max"] == pytest.approx(100.0)


@pytest.mark.qgis
def test_missing_environment_gives_check_installation_message(qgis, tmp_path):
    scene = crowns_scene(tmp_path / "s.tif", 300, 200)
    res = harness("missing", str(scene), str(tmp_path / "o.gpkg"),
                  env={"GEORS_PYTHON": None, "PATH": "/usr/bin:/bin"})
    report = res["check"]["REPORT"]
    assert res["check"]["OK"] is False
    assert "No geors environment found" in report and "pip install" in report and "GEORS_PYTHON" in report
    msg = res["detect_message"]
    assert "No geors environment found" in msg and "Check installation" in msg and "Traceback" not in msg


@pytest.mark.qgis
def test_web_layer_gets_clear_message(qgis, tmp_path):
    """An XYZ layer without EXTENT: it covers the world, so its export needs an extent (tests/test_qgis_layers.py
    exports one with an extent)."""
    res = harness("wms", str(tmp_path / "o.gpkg"))
    assert "covers the whole world" in res["message"] and "EXTENT" in res["message"]


@pytest.mark.qgis
def test_check_installation_reports_environment(qgis):
    res = harness("check")
    report = res["REPORT"]
    assert "geors installation: OK" in report
    assert "torch: version" in report and "CUDA" in report
    assert "SAM checkpoint sam-vit_b" in report
    if "[optional] SAM checkpoint sam-vit_b" in report:
        assert "models download sam-vit_b" in report


@pytest.mark.qgis
def test_plugin_zip_installs_and_starts(qgis, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "qgis_plugin" / "build_zip.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, check=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    res = harness("zip", r.stdout.strip(), env={"TMPDIR": str(scratch)})
    assert "geors-qgis-plugins-" in res["module"]  # the unpacked archive, not qgis_plugin/ of the checkout
    assert {"geors:run", "geors:detect", "geors:check_installation"} <= set(res["algorithms"])
    # the throw-away profile and plugin folders are gone (they used to pile up in /tmp, one per harness run)
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("geors-qgis-")]


# --- without QGIS ----------------------------------------------------------------------------------------


def test_build_zip_layout(tmp_path):
    import configparser
    import zipfile

    r = subprocess.run([sys.executable, str(REPO / "qgis_plugin" / "build_zip.py"), "--out", str(tmp_path),
                        "--no-wheel"], capture_output=True, text=True, check=True)  # the wheel: test_qgis_install
    path = Path(r.stdout.strip())
    assert path.name.startswith("geors_qgis-") and path.suffix == ".zip"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta = configparser.ConfigParser()
        meta.read_string(zf.read("geors_qgis/metadata.txt").decode())
    assert {"geors_qgis/__init__.py", "geors_qgis/metadata.txt", "geors_qgis/icon.png"} <= set(names)
    assert all(n.startswith("geors_qgis/") and not n.endswith((".pyc", ".so", ".pyd")) for n in names)
    assert meta["general"]["qgisMinimumVersion"] == "3.22" and path.name == f"geors_qgis-{meta['general']['version']}.zip"
    with zipfile.ZipFile(path) as zf:  # the checkout the archive came from: what Check installation installs
        assert zf.read("geors_qgis/geors_source.txt").decode().strip() == str(REPO)


def test_no_documented_command_installs_the_pypi_project_named_geors():
    """Regression (issue 28): the plugin's install text, its metadata and docs/qgis.md said
    pip install "geors[dev]" / pip install geors; on PyPI 'geors' is an unrelated project (no geors command)."""
    import re

    from geors_qgis.environment import INSTALL_COMMAND, geors_source

    assert geors_source() == str(REPO) and f'"{REPO}[sam]"' in INSTALL_COMMAND
    texts = {p: p.read_text(encoding="utf-8") for p in [*(REPO / "qgis_plugin" / "geors_qgis").glob("*.py"),
                                                       REPO / "qgis_plugin" / "geors_qgis" / "metadata.txt",
                                                       REPO / "docs" / "qgis.md"]}
    bad = re.compile(r"""pip install (-U |--upgrade )?["']*geors(\[[\w,]+\])?["']*(\s|$|\))|["']geors\[[\w,]+\]["']""")
    offenders = {str(p.relative_to(REPO)): m.group(0) for p, t in texts.items() if (m := bad.search(t))}
    assert not offenders, offenders


def test_models_info_json_has_model_defaults():
    from click.testing import CliRunner

    from geors.cli.main import main

    r = CliRunner().invoke(main, ["models", "info", "r2cnn-neon-trees", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    meta = info["metadata"]
    assert meta["tile_size"] == 640 and meta["overlap"] == 128 and 0 < meta["gate_threshold"] < 1
    assert meta["classes"] == ["tree"] and "training" not in meta
    bad = CliRunner().invoke(main, ["models", "info", "no-such-model", "--json"])
    assert bad.exit_code == 2


@pytest.mark.qgis
def test_dialog_defaults_take_the_models_score_threshold(qgis):
    """Regression: the dialogs showed 0.3 for SCORE_THRESHOLD whatever the model; now the model's calibrated
    value (metadata ``score_threshold``), like the gate threshold; a model without one keeps 0.3."""
    res = harness("defaults")
    assert res == {"gate": 0.2222, "score": 0.15, "score_without": 0.3}


_FAKE = r"""
import json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as geors does (its CLI installs its own handler)
print("INFO geors.cli: starting", file=sys.stderr, flush=True)
try:
    for scene in ("a.tif", "b.tif"):
        print(json.dumps({"event": "start", "desc": scene, "total": 4}), flush=True)
        for i in range(1, 5):
            time.sleep(float(sys.argv[1]))
            print(json.dumps({"event": "progress", "desc": scene, "done": i, "total": 4, "detections": i}), flush=True)
        print(json.dumps({"event": "end", "desc": scene, "done": 4, "total": 4}), flush=True)
    print(json.dumps({"run_id": "r1", "detections": 8}), flush=True)
except KeyboardInterrupt:
    print("Error: interrupted", file=sys.stderr, flush=True)
    sys.exit(130)
"""


def test_runner_maps_progress_and_summary():
    from geors_qgis.environment import GeorsEnvironment
    from geors_qgis.runner import run_geors

    fb = FakeFeedback()
    res = run_geors(GeorsEnvironment((sys.executable, "-c", _FAKE), "test"), ["0.01"], fb, n_scenes=2)
    assert res.returncode == 0 and not res.cancelled and res.summary == {"run_id": "r1", "detections": 8}
    assert fb.progress == sorted(fb.progress) and fb.progress[-1] == 100.0
    assert 50.0 in fb.progress  # the first scene's end is half of the bar
    assert ("console", "INFO geors.cli: starting") in fb.log


def test_runner_cancel_interrupts_subprocess():
    from geors_qgis.environment import GeorsEnvironment
    from geors_qgis.runner import run_geors

    fb = FakeFeedback(cancel_at=10.0)
    res = run_geors(GeorsEnvironment((sys.executable, "-c", _FAKE), "test"), ["0.5"], fb, n_scenes=2)
    assert res.cancelled and res.returncode == 130 and res.errors == ["interrupted"]
    assert max(fb.progress) < 100.0


def test_environment_lookup_order(tmp_path):
    from geors_qgis.environment import EnvironmentNotFound, find_environment, parse_commands

    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python3").write_text("")
    env = find_environment(str(tmp_path / "venv"), {"GEORS_PYTHON": "/elsewhere/python"})
    assert env.python == str(venv / "python3") and env.argv[1] == "-c"
    assert find_environment(None, {"GEORS_PYTHON": str(venv / "python3")}).source == "$GEORS_PYTHON"
    with pytest.raises(EnvironmentNotFound, match="does not exist"):
        find_environment(None, {"GEORS_PYTHON": str(tmp_path / "nope")})
    with pytest.raises(EnvironmentNotFound, match="No geors environment found"):
        find_environment(None, {"PATH": str(tmp_path)})
    assert parse_commands("Usage: x\n\nCommands:\n  detect  Gate...\n  segment  Seg...\n") == ["detect", "segment"]


# A stand-in for `geors train detector --progress jsonl`: the plan grows from 40 to 60 steps after the first
# validation, each step reports loss and ETA, then the JSON summary.
_FAKE_TRAIN = r"""
import json, sys
def emit(**o): print(json.dumps(o), flush=True)
emit(event="start", desc="training", total=40)
for step in range(1, 61):
    plan = 40 if step < 10 else 60
    emit(event="progress", desc="training", done=step, total=40, steps=plan, loss=1.0 / step,
         eta_s=(plan - step) * 7.0, elapsed_s=step)
    if step == 10:
        emit(event="progress", desc="training", done=step, total=40, steps=plan, val_AP50=0.42, best=0.42)
emit(event="end", desc="training", done=60, total=40, elapsed_s=60.0)
emit(model="m.safetensors", val_AP50=0.42)
"""

# A stand-in for `geors train segmenter` (no --progress): its step lines with the ETA on stderr, as
# geors/cli/segment.py prints them, then one in the format of the trainer's log.
_FAKE_SEG_TRAIN = r"""
import sys, time
for step, eta in ((20, 300), (40, 150)):
    time.sleep(0.2)
    print(f"coarse step {step}/60  loss 0.5000  eta {eta // 60}m{eta % 60:02d}s", file=sys.stderr, flush=True)
print("coarse step 40/60  validation mIoU 0.4878  (best 0.4878 at step 40)", file=sys.stderr, flush=True)
time.sleep(0.2)
print("INFO geors.train.segmenter: fine step 60/60 loss 0.5000 eta 0s", file=sys.stderr, flush=True)
print('{"model": "s.safetensors"}', flush=True)
"""


def test_runner_shows_training_steps_and_time_left():
    """Regression: training progress was read as tiles ('training: 8 tiles', done/total over the first plan,
    so the bar passed 100% when the plan grew) and one console line per step; the ETA was dropped."""
    from geors_qgis.environment import GeorsEnvironment
    from geors_qgis.runner import run_geors

    fb = FakeFeedback()
    res = run_geors(GeorsEnvironment((sys.executable, "-c", _FAKE_TRAIN), "test"), [], fb)
    assert res.returncode == 0 and res.summary == {"model": "m.safetensors", "val_AP50": 0.42}
    assert max(fb.progress) == pytest.approx(100.0) and all(0 <= p <= 100 for p in fb.progress)
    texts = [t for kind, t in fb.log if kind == "text"]
    assert "training: step 3/40, loss 0.333, 4 min 19 s left" in texts
    assert "training: step 15/60, loss 0.067, 5 min 15 s left" in texts
    assert ("info", "step 10/60: validation AP50 0.420 (best 0.420)") in fb.log
    assert len([t for kind, t in fb.log if kind == "console" and "step" in t]) <= 25  # not one line per step


def test_runner_reads_step_lines_of_a_trainer_without_jsonl():
    from geors_qgis.environment import GeorsEnvironment
    from geors_qgis.runner import eta_text, run_geors

    fb = FakeFeedback()
    res = run_geors(GeorsEnvironment((sys.executable, "-c", _FAKE_SEG_TRAIN), "test"), [], fb)
    assert res.returncode == 0
    texts = [t for kind, t in fb.log if kind == "text"]
    assert texts == ["coarse step 20/60, 5 min 00 s left", "coarse step 40/60, 2 min 30 s left",
                     "fine step 60/60, 0 s left"]
    assert fb.progress == sorted(fb.progress) and fb.progress[0] < 1 and fb.progress[-1] == pytest.approx(100.0)
    assert eta_text(3725) == "1 h 02 min"


def test_runner_closes_its_pipes():
    """Regression (issue 28): the runner left the subprocess's stdout/stderr pipes open (ResourceWarning: unclosed
    file, printed by qgis_process)."""
    import gc
    import warnings

    from geors_qgis.environment import GeorsEnvironment
    from geors_qgis.runner import run_geors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        res = run_geors(GeorsEnvironment((sys.executable, "-c", _FAKE), "test"), ["0"], FakeFeedback(), n_scenes=2)
        gc.collect()
    assert res.returncode == 0
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
