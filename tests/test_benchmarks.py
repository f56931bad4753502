"""Every benchmark script runs: ``--help`` in the default suite, a short real run in the slow suite.

The scripts are run as a user runs them (``python benchmarks/X.py ...`` in a subprocess, this
checkout's ``geors`` first on the path). ``--help`` must not import torch (it would cost seconds
per script in the default suite); each slow run uses tiny scenes and sizes and checks the JSON
(``--json``) the shared harness writes, so a run that measures nothing fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NEON = Path(os.environ.get("GEORS_CACHE_DIR", Path.home() / ".cache/geors")) / "samples/neon"
DOTA = ROOT.parent / "shared" / "data" / "dota-P1888"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402

SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def run(args: list[str], timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_scripts_are_found():
    assert {"device_check.py", "bench_read.py", "user_stories.py", "make_sparse_scene.py"} <= set(SCRIPTS)
    assert "harness.py" not in SCRIPTS and "mask_data.py" not in SCRIPTS  # modules, not scripts


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs_without_importing_torch(script):
    probe = ("import runpy, sys\n"
             f"sys.argv = [{str(BENCH / script)!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(BENCH / script)!r}, run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    assert e.code in (0, None), e.code\n"
             "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')\n")
    r = run(["-c", probe], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout and "-h, --help" in r.stdout
    assert r.stdout.strip().endswith("NO_TORCH"), f"{script} imports torch at --help"


def test_harness_table_and_json(tmp_path):
    rows = [{"name": "a", "rate": 1.23456, "n": 3}, {"name": "bb", "rate": 12345.6, "n": None}]
    text = harness.table(rows)
    assert text.splitlines()[0].split() == ["name", "rate", "n"] and "12,346" in text and "1.23" in text
    md = harness.table(rows, markdown=True).splitlines()
    assert md[0] == "| name | rate | n |" and md[1] == "|---|---|---|" and md[2] == "| a | 1.23 | 3 |"
    args = harness.parser("x", with_dir=True, device="cpu").parse_args(["--json", str(tmp_path / "o.json")])
    assert args.threads == 0 and args.device == "cpu" and args.dir == harness.DEFAULT_DIR
    harness.emit(rows, args, extra={"k": 1})
    assert json.loads((tmp_path / "o.json").read_text()) == {"rows": rows, "k": 1}


def test_harness_rate_counts_units_per_second():
    import time

    calls = []
    r = harness.rate(lambda: calls.append(time.sleep(0.01)), units=5, max_seconds=0.2, max_calls=4)
    assert len(calls) == 5 and r["calls"] == 4  # one warm-up, untimed
    assert 5 / 0.03 < r["per_s"] <= 5 / 0.01
    slow = harness.rate(lambda: time.sleep(0.05), units=1, max_seconds=0.04)  # the warm-up is the measurement
    assert slow["from_warmup"] and slow["calls"] == 1 and slow["per_s"] <= 20


def test_object_scene_has_objects(tmp_path):
    import rasterio

    path = harness.make_object_scene(tmp_path / "o.tif", 300, objects_per_mp=200)
    with rasterio.open(path) as ds:
        img = ds.read()
        assert ds.crs.to_epsg() == 32617 and img.shape == (3, 300, 300)
    assert (img[1] > 100).mean() > 0.02 and (img[1] < 60).mean() > 0.3  # bright crowns on dark ground


# ------------------------------------------------------------------ slow: a short real run of each script
def _needs(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not present")


def _rows(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())["rows"]
    assert rows
    return rows


def slow_bench_read(tmp):
    run_ok(["benchmarks/bench_read.py", "--size", "900", "--repeat", "1", "--dir", str(tmp), "--threads", "1",
            "--json", str(tmp / "r.json")])
    rows = _rows(tmp / "r.json")
    assert [r["ratio"] for r in rows][0] == 1.0 and all(r["seconds"] > 0 for r in rows)


def slow_bench_memory(tmp):
    run_ok(["benchmarks/bench_memory.py", "--sizes", "700,900", "--dir", str(tmp), "--threads", "1",
            "--json", str(tmp / "m.json")])
    rows = _rows(tmp / "m.json")
    assert [r["size"] for r in rows] == [700, 900] and all(r["tiles"] >= 1 and r["peak_rss_mb"] > 0 for r in rows)


def slow_bench_pipeline(tmp):
    run_ok(["benchmarks/bench_pipeline.py", "--sizes", "700", "--workers", "1", "--kinds", "sparse",
            "--dir", str(tmp), "--extra", "--threads 1", "--json", str(tmp / "p.json")])
    (row,) = _rows(tmp / "p.json")
    assert row["tiles"] == 4 and row["MP/s"] > 0


def slow_bench_models(tmp):
    run_ok(["benchmarks/bench_models.py", "--batch", "1", "--repeats", "1", "--threads", "1",
            "--json", str(tmp / "m.json")])
    (row, *_) = _rows(tmp / "m.json")
    assert row["gate_tiles_per_s"] > 0 and row["detector_tiles_per_s"] > 0


def slow_bench_detector_speedup(tmp):
    run_ok(["benchmarks/bench_detector_speedup.py", "--batch", "1", "--rounds", "1", "--repeats", "1",
            "--threads", "1", "--json", str(tmp / "s.json")])
    rows = _rows(tmp / "s.json")
    assert [r["variant"] for r in rows] == ["before", "+fold", "+channels_last", "+prefix_nms"]
    assert len({r["boxes"] for r in rows}) == 1 and all(r["max box diff px"] < 0.01 for r in rows)


def slow_make_sparse_scene(tmp):
    _needs(NEON / "OSBS_029.xml")
    run_ok(["benchmarks/make_sparse_scene.py", "-o", str(tmp / "s.tif"), "--size", "1280", "--fraction", "0.25"])
    assert (tmp / "s.tif").exists() and (tmp / "s_truth.gpkg").exists()


def slow_bench_gate(tmp):
    slow_make_sparse_scene(tmp)
    run_ok(["benchmarks/bench_gate.py", str(tmp / "s.tif"), "--device", "cpu", "--no-breakdown",
            "--batch-size", "2", "--threads", "1", "--outdir", str(tmp / "out"), "--json", str(tmp / "g.json")])
    rows = _rows(tmp / "g.json")
    assert [r["run"] for r in rows] == ["no_gate", "gate"] and all(r["seconds"] > 0 for r in rows)
    assert "time_ratio" in json.loads((tmp / "g.json").read_text())


def slow_bench_masks(tmp):
    run_ok(["benchmarks/bench_masks.py", "--engines", "box,watershed", "--data", "discs", "--repeats", "1",
            "--threads", "1", "--json", str(tmp / "q.json")])
    rows = _rows(tmp / "q.json")
    assert [r["engine"] for r in rows] == ["box", "watershed"] and all(0 < r["miou_i"] <= 1 for r in rows)
    run_ok(["benchmarks/bench_masks.py", "--speed", "--engines", "box,sam-tiny", "--boxes", "4", "--repeats", "1",
            "--threads", "1", "--json", str(tmp / "s.json")])
    assert all(r["boxes_per_s"] > 0 for r in _rows(tmp / "s.json"))


def slow_bench_segment(tmp):
    run_ok(["benchmarks/bench_segment.py", "--json", str(tmp / "s.json"), "speed", "--tiles", "1", "--threads", "1"])
    assert [r["network"] for r in _rows(tmp / "s.json")] == ["coarse_only", "c2fnet"]
    run_ok(["benchmarks/bench_segment.py", "--json", str(tmp / "m.json"), "memory", "--size", "700",
            "--stage", "threshold", "--dir", str(tmp)])
    rows = _rows(tmp / "m.json")
    assert [r["scene"] for r in rows] == ["700x700", "700x1400"] and all(r["features"] > 0 for r in rows)


def slow_user_stories(tmp):
    _needs(NEON / "OSBS_029.xml", DOTA / "P1888.png")
    run_ok(["benchmarks/user_stories.py", "--stories", "vehicles-masks", "--work", str(tmp),
            "--json", str(tmp / "u.json")])
    (row,) = json.loads((tmp / "u.json").read_text())
    assert row["story"] == "vehicles-masks" and 0 < row["mIoU_I box"] <= 1 and 0 < row["mIoU_I engine"] <= 1


def slow_device_check(tmp):
    r = run_ok(["benchmarks/device_check.py", "--device", "cpu", "--quick", "--threads", "1", "--seconds", "1",
                "--dir", str(tmp), "--out", str(tmp / "d.json")])
    report = json.loads((tmp / "d.json").read_text())
    assert [row["figure"] for row in report["rows"]] == ["gate+detect", "sam vit_b encoder", "c2fnet wide",
                                                         "train step"]
    assert all(isinstance(row["cpu"], float) and row["cpu"] > 0 for row in report["rows"]), report["rows"]
    assert report["environment"]["torch_threads"] == 1 and "train step" in r.stdout


def run_ok(args: list[str]) -> subprocess.CompletedProcess:
    r = run(args)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


SLOW_RUNS = {name.removeprefix("slow_") + ".py": fn for name, fn in dict(globals()).items()
             if name.startswith("slow_")}


def test_every_script_has_a_short_run():
    assert set(SLOW_RUNS) == set(SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SLOW_RUNS))
def test_short_run(script, tmp_path):
    SLOW_RUNS[script](tmp_path)


@pytest.mark.slow
def test_device_check_stops_at_its_budget(tmp_path):
    """A budget too short for a ViT-B forward on one CPU thread (about 2 minutes here): the figure is stopped
    (between the encoder's blocks; a single long C++ call would meet the hard stop, exit 124), the check ends
    by itself and its JSON says why."""
    import time

    out = tmp_path / "d.json"
    t0 = time.monotonic()
    r = run(["benchmarks/device_check.py", "--device", "cpu", "--threads", "1", "--budget", "15",
             "--figures", "sam vit_b encoder", "--dir", str(tmp_path), "--out", str(out)], timeout=180)
    elapsed = time.monotonic() - t0
    assert elapsed < 15 + 20 + 30  # budget + HARD_STOP_S + interpreter start on a loaded machine
    assert r.returncode in (0, 1, 124), r.stderr[-2000:]  # 0 only where one forward fits the budget
    report = json.loads(out.read_text())
    assert report["environment"]["torch_threads"] == 1
    if r.returncode == 1:  # nothing measured: the row says why
        assert report["rows"][0]["cpu"].startswith("skipped: the --budget of 15 s ran out")
    elif r.returncode == 124:
        assert "hard stop" in r.stderr
