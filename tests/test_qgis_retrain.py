"""QGIS: *Retrain from corrections* runs headless through the plugin (issue 28, the analyst's loop).

A real run of the default model on the NEON sample OSBS_029, edited as QGIS saves edits (rows deleted, a box
drawn), then the algorithm in QGIS's own Python: the command line it runs, the model it writes, and the new
model's detections on the scene. Needs QGIS (python3-qgis) and ``geors sample neon``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from geors.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_corrections import NEON, RUN, _bounds, _edit, _rows  # noqa: E402
from test_qgis_plugin import QGIS_PYTHON, _qgis_missing  # noqa: E402

HARNESS = Path(__file__).with_name("qgis_retrain_harness.py")


@pytest.mark.qgis
def test_retrain_from_corrections_in_qgis(tmp_path):
    if _qgis_missing():
        pytest.skip(_qgis_missing())
    if not (NEON / "OSBS_029.tif").exists():
        pytest.skip("NEON sample not downloaded (geors sample neon)")
    scene = tmp_path / "OSBS 029 scène.tif"  # a space and a non-ASCII letter in the path
    shutil.copy(NEON / "OSBS_029.tif", scene)
    out = tmp_path / "run.gpkg"
    r = CliRunner().invoke(main, ["detect", str(scene), "-o", str(out), *RUN])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    x0, y0, x1, y1 = _bounds(scene)
    edited = _edit(out, tmp_path / "edited.gpkg", delete=list(rows.index[:2]),
                   draw=[((x0 + 2, y1 - 6, x0 + 5, y1 - 2), None)], reviewed=(x0, y0, x1, y1))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "GEORS_PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    p = subprocess.run([QGIS_PYTHON, str(HARNESS), str(edited), str(scene), str(tmp_path)], capture_output=True,
                       text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[1])
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT "):])
    assert "exception" not in res, res.get("traceback")
    assert Path(res["output"]).is_file()
    assert res["summary"]["corrections"]["deleted"] == 2 and res["summary"]["corrections"]["drawn"] == 1
    train_cmd, detect_cmd = res["commands"][0], res["commands"][-1]
    assert "--corrections" in train_cmd and str(edited) in train_cmd and "--steps 3" in train_cmd
    assert " detect " in detect_cmd and "retrained.safetensors" in detect_cmd
    assert res["summary"]["detect"]["status"] == "finished"
    assert Path(res["detections"]).is_file()
