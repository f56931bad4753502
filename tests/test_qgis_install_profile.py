"""A fresh QGIS profile reaches READY through the plugin alone (issue 28, 'Done means').

Headless, as an analyst's QGIS would do it: the plugin archive (build_zip.py, with its geors wheel) is
unpacked into the plugins folder of an empty profile (QGIS_CUSTOM_CONFIG_PATH, under a folder whose name has
a space and a 'ü'), enabled, and driven with ``qgis_process``: Check installation says NOT READY and names
Set up environment; Set up environment runs; Check installation, in a new process that only has the profile's
settings, says READY; then an algorithm runs on a scene and an output whose paths have spaces and non-ASCII
letters. No GEORS_PYTHON, no geors on PATH.

To stay offline and within a minute, Set up environment runs with REUSE_PACKAGES and BASE_PYTHON = this
interpreter (which has torch): the venv sees its packages, so only the geors wheel is installed. That is the
same code path as a real set-up, which differs in the options (a torch download step is added).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

import scenes

REPO = Path(__file__).resolve().parents[1]


def _qgis_process() -> str | None:
    """The qgis_process executable (Debian's /usr/bin/qgis_process wrapper passes --noversioncheck, which the
    3.22 executor refuses, so its qgis_process.bin is used where present)."""
    exe = shutil.which("qgis_process")
    if exe and os.path.isfile(exe + ".bin"):
        return exe + ".bin"
    return exe


@pytest.fixture
def qgis_process():
    exe = _qgis_process()
    if exe is None:
        pytest.skip("qgis_process not found (apt-get install qgis python3-qgis)")
    return exe


def _run(exe: str, env: dict, *args: str, timeout: float = 600) -> dict:
    r = subprocess.run([exe, "--json", *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=env["HOME"])
    start = r.stdout.find("{")
    assert r.returncode == 0 and start >= 0, f"qgis_process {' '.join(args)}: exit {r.returncode}\n" \
                                            f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout[start:])


@pytest.mark.qgis
@pytest.mark.slow
def test_fresh_profile_reaches_ready_through_the_plugin(qgis_process, tmp_path):
    built = subprocess.run([sys.executable, str(REPO / "qgis_plugin" / "build_zip.py"), "--out", str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout.strip()
    root = tmp_path / "QGIS profil ü"
    plugins = root / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(built) as zf:
        zf.extractall(plugins)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("GEORS_PYTHON", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(root), HOME=str(home),
               PATH="/usr/bin:/bin")  # no geors command on PATH
    assert shutil.which("geors", path=env["PATH"]) is None
    subprocess.run([qgis_process, "plugins", "enable", "geors_qgis"], env=env, capture_output=True, check=True,
                   timeout=120, cwd=home)

    before = _run(qgis_process, env, "run", "geors:check_installation")["results"]
    assert before["OK"] is False and "No geors environment found" in before["REPORT"]
    assert "Set up environment" in before["REPORT"] and "geors_gis-" in before["REPORT"]  # the carried wheel

    setup = _run(qgis_process, env, "run", "geors:setup_environment", "--",
                 f"BASE_PYTHON={sys.executable}", "REUSE_PACKAGES=true")["results"]
    folder = root / "profiles" / "default" / "geors" / "venv"
    assert setup["ENVIRONMENT"] == str(folder) and setup["OK"] is True, setup["REPORT"]
    log = Path(setup["LOG"]).read_text(encoding="utf-8")
    assert "--system-site-packages" in log and "geors_gis-" in log and "=== done" in log
    facts = json.loads(next(ln for ln in reversed(log.splitlines()) if ln.startswith('{"python"')))
    assert facts["geors_file"].startswith(str(folder))  # geors from the new venv, not from the checkout
    assert facts["torch"] and "cuda_build" in facts

    after = _run(qgis_process, env, "run", "geors:check_installation")["results"]  # a new process: settings only
    assert after["OK"] is True, after["REPORT"]
    assert "geors installation: OK" in after["REPORT"] and "from the plugin setting" in after["REPORT"]
    assert str(folder) in after["REPORT"]
    # the torch build named as it is: torch.version.cuda / torch.cuda.is_available() of the new environment
    if facts["cuda"]:
        assert "[      ok] CUDA: available" in after["REPORT"]
    elif facts["cuda_build"]:
        assert f"torch is a CUDA {facts['cuda_build']} build, but it sees no usable GPU" in after["REPORT"]
        assert "--force-reinstall" not in after["REPORT"]
    else:
        assert "CPU-only build" in after["REPORT"]

    # an algorithm on paths with spaces and non-ASCII letters, through the environment just made
    data_dir = tmp_path / "Jane Doe's données"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    scene = scenes.write(data_dir / "scène ü.tif", rng.integers(0, 255, (3, 200, 300), dtype=np.uint8),
                         CRS.from_epsg(32617), Affine(0.1, 0, 404000.0, 0, -0.1, 3285000.0))
    out = data_dir / "tuiles é.gpkg"
    tiles = _run(qgis_process, env, "run", "geors:tiles", "--", f"SCENE={scene}", "TILE=128", "OVERLAP=32",
                 f"OUTPUT={out}")["results"]
    assert out.is_file() and tiles["TILES"].startswith(str(out))
    import pyogrio

    plain = tmp_path / "plain.gpkg"  # the same command from this interpreter, on a plain path
    subprocess.run([sys.executable, "-c", "import sys; from geors.cli.main import main; sys.exit(main())", "tiles",
                    str(scene), "--tile", "128", "--overlap", "32", "-o", str(plain)], check=True, capture_output=True)
    got, expected = (pyogrio.read_dataframe(p, layer="tiles") for p in (out, plain))
    assert len(got) == len(expected) > 1
    assert got.geometry.bounds.values.tolist() == expected.geometry.bounds.values.tolist()
    found = data_dir / "détections ü.gpkg"  # and the model: Detect objects
    det = _run(qgis_process, env, "run", "geors:detect", "--", f"SCENES={scene}", f"OUTPUT={found}", "TILE=256",
               "OVERLAP=64", "DEVICE=cpu", "NO_GATE=true", "BATCH_SIZE=1")["results"]
    assert det["DETECTIONS"] == f"{found}|layername=detections"
    assert "detections" in pyogrio.list_layers(found)[:, 0]


def _gui(env: dict, *args: str) -> dict:
    r = subprocess.run([os.environ.get("GEORS_QGIS_PYTHON", "/usr/bin/python3"),
                        str(REPO / "tests" / "qgis_install_harness.py"), "gui", *args],
                       capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"no result (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    data = json.loads(lines[-1][len("RESULT "):])
    assert "exception" not in data, data.get("traceback")
    return data


@pytest.mark.qgis
def test_window_offers_set_up_until_an_environment_works(qgis_process):
    """In the QGIS window: Plugins > geors has Set up environment and Check installation; without a working
    environment a message bar offers Set up environment, whose button opens its dialog; with one, it does not;
    the offer goes when the set-up stores an environment and the provider reloads."""
    env = {k: v for k, v in os.environ.items() if k not in ("GEORS_PYTHON", "PYTHONPATH")}
    env.update(QT_QPA_PLATFORM="offscreen", PATH="/usr/bin:/bin")
    bare = _gui(env)
    assert bare["menu"] == [["&geors", "Set up environment…"], ["&geors", "Check installation…"]]
    assert bare["offered"] and bare["buttons"] == ["Set up environment"] and bare["after_click"]
    assert bare["opened"] == ["geors:check_installation", "geors:setup_environment"]
    assert bare["menu_after_unload"] == [] and bare["works"] is False
    ready = _gui({**env, "GEORS_PYTHON": sys.executable})
    assert ready["works"] is True and not ready["offered"] and ready["opened"] == ["geors:check_installation"]
    set_up = _gui(env, sys.executable)
    assert set_up["offered"] and set_up["gone_after_setup"] is True and set_up["works"] is True
    assert "geors-qgis-profile-" in set_up["settings_file"]  # the stored setting stays in the throw-away profile
