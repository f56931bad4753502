"""Installing geors from the QGIS plugin (issue 28, 'Install'), without QGIS.

``setup_env`` plans the set-up as argv lists from facts the tests simulate (platform, nvidia-smi, the base
Python) and runs them with progress, a log and cancel; these tests check the commands per platform, the torch
build chosen, pip's output read as progress, and that no text anywhere installs PyPI's unrelated ``geors``.
The real run in QGIS is tests/test_qgis_install_profile.py (markers qgis, slow).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "qgis_plugin"))

from geors_qgis import install_check  # noqa: E402
from geors_qgis import setup_env as S  # noqa: E402
from geors_qgis.environment import GeorsEnvironment, install_command  # noqa: E402
from geors_qgis.runner import run_geors  # noqa: E402

from fake_feedback import FakeFeedback  # noqa: E402

NO_GPU = S.GpuFacts()
SMI_L = "GPU 0: NVIDIA GeForce RTX 3060 (UUID: GPU-8f2c7e0a-1111-2222-3333-444455556666)\n"
SMI = """+-----------------------------------------------------------------------------+
| NVIDIA-SMI 546.33       Driver Version: 546.33       CUDA Version: 12.3     |
|-------------------------------+----------------------+----------------------+"""
ONE_GPU = S.parse_nvidia_smi(SMI_L, SMI)
ODD = "/home/Jane Doe/QGIS profil ü/geors/venv"  # a space and a non-ASCII letter
ODD_WIN = r"C:\Users\Jane Doe\AppData\Roaming\QGIS\QGIS3\profiles\défaut\geors\venv"


# --- commands per platform -----------------------------------------------------------------------------------


def test_venv_python_and_default_folder_per_platform():
    assert S.venv_python(ODD_WIN, "win32") == ODD_WIN + r"\Scripts\python.exe"
    assert S.venv_python(ODD, "linux") == ODD + "/bin/python"
    assert S.venv_python(ODD, "darwin") == ODD + "/bin/python"
    assert S.default_folder(r"C:\Users\Jane Doe\QGIS3\profiles\default", "win32") == \
        r"C:\Users\Jane Doe\QGIS3\profiles\default\geors\venv"
    assert S.default_folder("/home/j/.local/share/QGIS/QGIS3/profiles/default", "linux") == \
        "/home/j/.local/share/QGIS/QGIS3/profiles/default/geors/venv"


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_plan_is_argv_lists_with_paths_kept_whole(platform):
    """Every step is an argv list (no shell): a folder with a space and 'ü' stays one argument; the venv's own
    python runs pip; the torch build gets its own pip call before geors."""
    folder = ODD_WIN if platform == "win32" else ODD
    wheel = (r"C:\Program Files\QGIS 3.34\plugins\geors_qgis\wheels\geors_gis-0.1.0-py3-none-any.whl"
             if platform == "win32" else "/opt/qgis plugins/geors_qgis/wheels/geors_gis-0.1.0-py3-none-any.whl")
    torch = S.choose_torch("auto", NO_GPU, platform)
    plan = S.plan_setup(folder, "/usr/bin/python3", wheel, torch, platform)
    py = S.venv_python(folder, platform)
    assert [s.kind for s in plan.steps] == ["venv", "pip", "pip", "verify"]
    venv, torch_step, geors_step, verify = (s.argv for s in plan.steps)
    assert venv == ("/usr/bin/python3", "-m", "venv", folder)
    i = torch_step.index("torch")
    assert torch_step[:4] == (py, "-m", "pip", "install") and torch_step[i + 1] == "torchvision"
    if platform == "darwin":  # PyPI's macOS torch (no CUDA there)
        assert "--index-url" not in torch_step
    else:
        assert torch_step[-2:] == ("--index-url", S.CPU_INDEX)
    assert geors_step[:4] == (py, "-m", "pip", "install") and geors_step[-1] == wheel + "[sam]"
    assert verify[:3] == (py, "-I", "-c")
    assert plan.python == py and plan.log_path.startswith(folder) and plan.log_path.endswith(S.LOG_NAME)
    assert all(isinstance(a, str) for s in plan.steps for a in s.argv)


def test_plan_with_reused_packages_downloads_nothing_it_has():
    torch = S.choose_torch("auto", NO_GPU, "linux", base_has_torch=True, reuse_packages=True)
    assert not torch.install and torch.build == "reused"
    plan = S.plan_setup(ODD, "/py/bin/python3", str(REPO), torch, "linux", reuse_packages=True, extras=())
    venv, geors_step, _ = (s.argv for s in plan.steps)
    assert venv == ("/py/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", ODD)
    # a checkout is built with the reused setuptools (build isolation would download them)
    assert geors_step[-2:] == ("--no-build-isolation", str(REPO))
    # reuse asked but the base Python has no torch: it is installed
    assert S.choose_torch("auto", NO_GPU, "linux", base_has_torch=False, reuse_packages=True).install


def test_geors_requirement_never_names_the_pypi_project():
    assert S.geors_requirement("git+https://github.com/geors/geors") == \
        "geors-gis[sam] @ git+https://github.com/geors/geors"
    assert S.geors_requirement("/a b/geors", ()) == "/a b/geors"
    with pytest.raises(S.SetupError, match="SOURCE: geors is neither"):
        S.check_source("geors")
    S.check_source(str(REPO))  # a checkout
    S.check_source("https://github.com/geors/geors/archive/main.zip")


def test_raw_progress_goes_after_install():
    argv = S.pip_install("/v/bin/python", ["torch"])
    assert S.with_raw_progress(argv)[:6] == ("/v/bin/python", "-m", "pip", "install", "--progress-bar", "raw")


def test_pip_of_this_python_is_asked_for_raw_progress():
    help_text = subprocess.run([sys.executable, "-m", "pip", "install", "--help"], capture_output=True,
                               text=True).stdout
    expected = bool(re.search(r"--progress-bar <progress_bar>\s+.*?\[[^\]]*\braw\b", help_text, re.S))
    assert S.pip_has_raw_progress(sys.executable) is expected
    assert S.pip_has_raw_progress("/no/such/python") is False


# --- torch build -----------------------------------------------------------------------------------------------


def test_nvidia_smi_absent_means_no_nvidia_gpu():
    calls = []
    facts = S.nvidia_gpus(which=lambda name: None, run=lambda *a, **k: calls.append(a))
    assert not facts.nvidia and "not found" in facts.detail and calls == []


def test_nvidia_smi_output_is_read():
    assert ONE_GPU.gpus == ("NVIDIA GeForce RTX 3060",) and ONE_GPU.driver_cuda == (12, 3)

    def run(argv, **kw):
        out = SMI_L if argv[1:] == ["-L"] else SMI
        return subprocess.CompletedProcess(argv, 0, out, "")

    assert S.nvidia_gpus(which=lambda n: "/usr/bin/nvidia-smi", run=run) == ONE_GPU

    def failing(argv, **kw):
        return subprocess.CompletedProcess(argv, 9, "", "NVIDIA-SMI has failed: no driver")

    broken = S.nvidia_gpus(which=lambda n: "/usr/bin/nvidia-smi", run=failing)
    assert not broken.nvidia and "no driver" in broken.detail


def test_torch_build_per_machine():
    # no NVIDIA GPU: CPU-only wheels on Linux and Windows
    for platform in ("linux", "win32"):
        c = S.choose_torch("auto", NO_GPU, platform)
        assert (c.build, c.index_url) == ("cpu", S.CPU_INDEX) and "no NVIDIA GPU" in c.reason
    # an NVIDIA GPU: Linux gets PyPI's default (the CUDA build), Windows the CUDA index its driver supports
    assert (S.choose_torch("auto", ONE_GPU, "linux").build, S.choose_torch("auto", ONE_GPU, "linux").index_url) \
        == ("cuda", None)
    assert S.choose_torch("auto", ONE_GPU, "win32").index_url == "https://download.pytorch.org/whl/cu118"
    newer = S.GpuFacts(("RTX 4090",), (12, 9), "x")
    assert S.choose_torch("auto", newer, "win32").index_url.endswith("/cu128")
    assert S.choose_torch("cuda", S.GpuFacts(("A",), None, "x"), "win32").index_url.endswith("/" +
                                                                                              S.CUDA_INDEX_FALLBACK)
    # macOS: PyPI's build; CUDA refused with the reason
    assert S.choose_torch("auto", NO_GPU, "darwin").index_url is None
    with pytest.raises(S.SetupError, match="no CUDA build of torch for macOS"):
        S.choose_torch("cuda", NO_GPU, "darwin")
    # asked explicitly
    assert S.choose_torch("cpu", ONE_GPU, "linux").index_url == S.CPU_INDEX
    assert S.choose_torch("pypi", NO_GPU, "win32").index_url is None
    assert S.choose_torch("auto", NO_GPU, "linux", index_url="https://mirror/torch").index_url == \
        "https://mirror/torch"
    with pytest.raises(S.SetupError, match="TORCH: unknown choice"):
        S.choose_torch("rocm", NO_GPU, "linux")


def test_check_installation_advice_follows_the_machine():
    """Regression (issue 28): a CPU-only torch got 'install a cuXYZ build' also on a machine without an NVIDIA
    GPU (nvidia-smi absent), where the CPU build is the right one; with a GPU the advice names the index."""
    pip = "/env/bin/python -m pip install"
    cpu_facts = {"torch": "2.5.1+cpu", "cuda": False, "cuda_build": None}
    no_gpu = install_check.cuda_item(cpu_facts, pip, NO_GPU, "linux")
    assert "right one for this machine" in no_gpu["detail"] and not no_gpu["fix"]
    win = install_check.cuda_item(cpu_facts, pip, ONE_GPU, "win32")
    assert win["fix"] == f"{pip} --force-reinstall torch torchvision --index-url https://download.pytorch.org/whl/cu118"
    lin = install_check.cuda_item(cpu_facts, pip, ONE_GPU, "linux")
    assert lin["fix"] == f"{pip} --force-reinstall torch torchvision" and "RTX 3060" in lin["detail"]
    cuda_facts = {"torch": "2.5.1+cu124", "cuda": False, "cuda_build": "12.4"}
    assert "no torch reinstall" in install_check.cuda_item(cuda_facts, pip, NO_GPU, "linux")["fix"]


# --- base Python ----------------------------------------------------------------------------------------------


def test_base_python_candidates_per_platform():
    win = S.base_python_candidates("win32", which=lambda n: None, base_prefix=r"C:\OSGeo4W\apps\Python312",
                                   executable=r"C:\OSGeo4W\bin\qgis-bin.exe", globber=lambda p: [])
    assert win == [r"C:\OSGeo4W\apps\Python312\python.exe"]  # QGIS's sys.executable is QGIS itself
    framework = "/Library/Frameworks/Python.framework/Versions/3.{}/bin/python3"
    mac = S.base_python_candidates("darwin", which=lambda n: "/usr/bin/python3" if n == "python3" else None,
                                   base_prefix="/Applications/QGIS.app/Contents/Frameworks",
                                   executable="/Applications/QGIS.app/Contents/MacOS/QGIS",
                                   globber=lambda p: [framework.format(12), framework.format(13)]
                                   if "Framework" in p else [p] if p.startswith("/opt/homebrew") else [])
    assert mac[1:] == ["/Applications/QGIS.app/Contents/Frameworks/bin/python3", "/usr/bin/python3",
                       framework.format(13), framework.format(12), "/opt/homebrew/bin/python3"]


def test_base_python_must_be_311_with_venv():
    facts = {"/old/python": {"version": [3, 9], "venv": True, "pip": True, "torch": False},
             "/deb/python3": {"version": [3, 11], "venv": False, "pip": True, "torch": False},
             "/good/python3": {"version": [3, 12], "venv": True, "pip": False, "torch": True}}
    cands = list(facts)
    exists = {"inspect": facts.__getitem__, "candidates": cands}
    import os

    real_isfile = os.path.isfile
    os.path.isfile = lambda p: p in facts or real_isfile(p)
    try:
        assert S.find_base_python(**exists)[0] == "/good/python3"
        with pytest.raises(S.SetupError, match=r"BASE_PYTHON: /old/python is Python 3\.9; geors needs 3\.11"):
            S.find_base_python("/old/python", inspect=facts.__getitem__)
        with pytest.raises(S.SetupError, match="apt install python3-venv"):
            S.find_base_python("/deb/python3", inspect=facts.__getitem__)
        with pytest.raises(S.SetupError, match="has no pip, which REUSE_PACKAGES uses"):
            S.find_base_python("/good/python3", inspect=facts.__getitem__, reuse_packages=True)
        with pytest.raises(S.SetupError, match="No Python 3.11 or newer.*tried: /old/python is Python 3.9"):
            S.find_base_python(inspect=facts.__getitem__, candidates=cands[:2])
    finally:
        os.path.isfile = real_isfile


def test_this_python_is_a_fit_base():
    path, facts = S.find_base_python(sys.executable)
    assert path == sys.executable and facts["torch"] and tuple(facts["version"]) >= (3, 11)


# --- progress, log, cancel ------------------------------------------------------------------------------------

PIP_LOG = """\
Looking in indexes: https://download.pytorch.org/whl/cpu
Collecting torch
  Downloading https://download.pytorch.org/whl/cpu/torch-2.5.1%2Bcpu-cp311-cp311-linux_x86_64.whl (174.7 MB)
Progress 0 of 174700000
Progress 87350000 of 174700000
Progress 174700000 of 174700000
Collecting torchvision
  Downloading torchvision-0.20.1+cpu-cp311-cp311-linux_x86_64.whl (1.8 MB)
  Progress 1800000 of 1800000 bytes
Requirement already satisfied: filelock in ./lib/python3.11/site-packages (from torch) (3.16.1)
Installing collected packages: torch, torchvision
Successfully installed torch-2.5.1+cpu torchvision-0.20.1+cpu
"""


def test_pip_output_becomes_progress():
    p = S.PipProgress()
    fractions, texts = [], []
    for line in PIP_LOG.splitlines():
        if p.feed(line):
            fractions.append(p.fraction)
            texts.append(p.text)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0 < fractions[0] < 0.2
    assert "downloading torch-2.5.1%2Bcpu-cp311-cp311-linux_x86_64.whl (174.7 MB)" in texts
    assert "downloading torch: 50% of 175 MB" in texts
    assert "downloading torchvision: 100% of 2 MB" in texts  # pip 25's "Progress N of M bytes", indented
    assert "installing torch, torchvision" in texts and "collecting filelock (3 requirements)" in texts
    bad = S.PipProgress()
    bad.feed("ERROR: Could not find a version that satisfies the requirement torch (from versions: none)")
    assert bad.errors == ["Could not find a version that satisfies the requirement torch (from versions: none)"]


def _fake_plan(folder: Path, pip_script: str, verify: dict | None = None) -> S.SetupPlan:
    """A plan whose steps are this interpreter printing what venv/pip/the check print."""
    facts = verify or {"geors": "0.1.0", "torch": "2.5.1+cpu", "cuda_build": None, "cuda": False}
    steps = [S.Step("create the virtual environment", (sys.executable, "-c", "print('venv made')"), 5, "venv"),
             S.Step("install torch (cpu)", (sys.executable, "-c", pip_script), 60, "pip"),
             S.Step("check the environment", (sys.executable, "-c", f"print({json.dumps(json.dumps(facts))})"), 5,
                    "verify")]
    return S.SetupPlan(str(folder), sys.executable, steps, S.choose_torch("cpu", NO_GPU, "linux"), "x",
                       str(folder / S.LOG_NAME))


def test_run_setup_reports_progress_and_writes_the_log(tmp_path):
    folder = tmp_path / "env ü"
    script = f"import sys, time\nfor line in {PIP_LOG.splitlines()!r}:\n    print(line, flush=True)\n"
    fb = FakeFeedback()
    res = S.run_setup(_fake_plan(folder, script), fb, raw_progress=lambda py: False)
    assert res.ok and res.facts["torch"] == "2.5.1+cpu" and not res.cancelled
    assert fb.progress == sorted(fb.progress) and fb.progress[-1] == pytest.approx(100.0)
    assert any(t.startswith("install torch (cpu): downloading torch: 50%") for t in fb.texts)
    log = (folder / S.LOG_NAME).read_text(encoding="utf-8")
    # raw progress lines are shown in the bar only (the logged command line of this fake pip holds them too)
    assert not [ln for ln in [*log.splitlines(), *fb.console] if ln.strip().startswith("Progress ")]
    assert "venv made" in log and "Successfully installed torch-2.5.1+cpu" in log and "=== done" in log
    assert "torch: CPU-only build, as asked" in log
    assert S.torch_summary(res.facts) == "torch 2.5.1+cpu, a CPU-only build"
    assert S.torch_summary({"torch": "2.5", "cuda_build": "12.4", "cuda": True}) == \
        "torch 2.5, a CUDA 12.4 build that sees a GPU"


def test_run_setup_names_the_failing_step(tmp_path):
    script = "import sys\nprint('Collecting torch')\nprint('ERROR: No matching distribution found for torch')\nsys.exit(1)"
    res = S.run_setup(_fake_plan(tmp_path, script), FakeFeedback(), raw_progress=lambda py: False)
    assert not res.ok and res.failed_step == "install torch (cpu)"
    assert res.errors == ["No matching distribution found for torch"]
    missing = S.run_setup(_fake_plan(tmp_path / "b", "print(1)", {"torch_error": "ImportError: x"}), FakeFeedback(),
                          raw_progress=lambda py: False)
    assert not missing.ok and missing.failed_step == "check the environment"
    assert missing.errors == ["geors not importable", "ImportError: x"]


def test_run_setup_cancel_stops_pip(tmp_path):
    script = "import time\nprint('Collecting torch', flush=True)\ntime.sleep(60)\nprint('Successfully installed x')"
    fb = FakeFeedback(cancel_at=6.0)  # cancelled once the first 'Collecting' moves the bar
    t0 = time.monotonic()
    res = S.run_setup(_fake_plan(tmp_path, script), fb, raw_progress=lambda py: False)
    assert res.cancelled and not res.ok and res.failed_step == "install torch (cpu)"
    assert time.monotonic() - t0 < 20
    assert "cancelled" in (tmp_path / S.LOG_NAME).read_text(encoding="utf-8")


# --- quoting of paths with spaces and non-ASCII letters --------------------------------------------------------

_ECHO = "import json, sys; print(json.dumps({'argv': sys.argv[1:]}))"


def test_runner_passes_odd_paths_whole():
    """The runner hands geors every argument as one argv entry (no shell): spaces, quotes, 'ü', '&'."""
    args = ["detect", "/data/Jane Doe/scène ü.tif", "-o", "/out/it's & more/trees.gpkg"]
    res = run_geors(GeorsEnvironment((sys.executable, "-c", _ECHO), "test"), args, FakeFeedback())
    assert res.returncode == 0 and res.summary == {"argv": args}


def test_copyable_command_lines_per_platform(monkeypatch):
    argv = [r"C:\Users\Jane Doe\geors env\Scripts\python.exe", "-m", "pip", "install", r"C:\a b\geors[sam]"]
    assert S.display_command(argv, "win32") == \
        r'"C:\Users\Jane Doe\geors env\Scripts\python.exe" -m pip install "C:\a b\geors[sam]"'
    assert S.display_command(["/a b/python", "-c", "x"], "linux") == "'/a b/python' -c x"
    env = GeorsEnvironment(("/opt/geors env/bin/geors",), "test")
    assert env.display(["detect", "/d/scène ü.tif"]) == "'/opt/geors env/bin/geors' detect '/d/scène ü.tif'"
    monkeypatch.setattr(sys, "platform", "win32")
    win = GeorsEnvironment((r"C:\geors env\Scripts\geors.exe",), "test")
    assert win.display(["detect", r"D:\Jane Doe\ortho.tif"]) == \
        r'"C:\geors env\Scripts\geors.exe" detect "D:\Jane Doe\ortho.tif"'


# --- nothing installs PyPI's project named geors ----------------------------------------------------------------

# a pip install line (or install_check's "{pip}" prefix) whose requirement is the bare name geors, with or
# without extras and quotes: PyPI's unrelated project
_BARE = re.compile(r"""(?:pip install|\{pip\})(?:\s+-{1,2}[\w-]+)*\s+["']?geors(\[[^\]\s]*\])?["']?(?=[\s`)\]'".,;]|$)""")
_WARNING = re.compile(r"\b(not|never)\b\W*$", re.I)  # "not `pip install geors`": a text that warns of it


def _bare_installs(text: str) -> list[str]:
    return [m.group(0) for m in _BARE.finditer(text) if not _WARNING.search(text[max(0, m.start() - 25):m.start()])]


def _texts() -> dict[str, str]:
    paths = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "docs" / "gen").glob("*.py"),
             *(REPO / "qgis_plugin" / "geors_qgis").glob("*.py"), REPO / "qgis_plugin" / "geors_qgis" / "metadata.txt",
             *(REPO / "geors").rglob("*.py"), *(REPO / "examples").glob("*.py")]
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in paths}


def test_no_text_installs_the_pypi_project_named_geors():
    """Regression (issue 28): docs, the plugin's metadata and fix texts, and geors' own error message
    (``pip install 'geors[sam]'``) named PyPI's unrelated ``geors``; so did Check installation's fix for a
    missing default model (``pip install --force-reinstall --no-deps "geors"``)."""
    offenders = {name: found for name, text in _texts().items() if (found := _bare_installs(text))}
    assert not offenders, offenders
    for platform in ("linux", "win32"):
        assert "[sam]" in install_command(platform) and not _bare_installs(install_command(platform))
    # the pattern sees the old texts: install_check's model fix and geors.errors' message
    assert _bare_installs("""f'{pip} --force-reinstall --no-deps "geors"'""")
    assert _bare_installs("""f"Install it with: pip install 'geors[{extra}]'\"""")
    assert not _bare_installs('pip install "/path/to/geors[sam]"') and not _bare_installs("not `pip install geors`")


def test_missing_optional_package_names_the_package():
    from geors.errors import DependencyNotFoundError, require

    with pytest.raises(DependencyNotFoundError) as exc:
        require("segment_anything_not_here", "sam", "SAM masks")
    assert "pip install segment-anything-not-here" in str(exc.value) and "geors[" not in str(exc.value)


def test_distribution_name_is_not_the_pypi_one():
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["name"] == S.DIST_NAME == "geors-gis" and meta["scripts"] == {"geors": "geors.cli.main:main"}


@pytest.mark.slow
def test_plugin_zip_carries_an_installable_wheel(tmp_path):
    """build_zip.py puts a wheel of geors (distribution geors-gis, package geors with its default models, the
    geors command) in the archive, where Set up environment finds it; the checkout is left clean."""
    before = subprocess.run(["git", "status", "--porcelain", "--ignored", "--", "build", "geors_gis.egg-info"],
                            capture_output=True, text=True, cwd=REPO).stdout
    r = subprocess.run([sys.executable, str(REPO / "qgis_plugin" / "build_zip.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, check=True)
    with zipfile.ZipFile(r.stdout.strip()) as zf:
        wheels = [n for n in zf.namelist() if n.startswith("geors_qgis/wheels/")]
        assert len(wheels) == 1 and re.fullmatch(r"geors_qgis/wheels/geors_gis-[\w.]+-py3-none-any\.whl", wheels[0])
        zf.extractall(tmp_path / "plugins")
    from geors_qgis.environment import carried_wheel, install_source

    whl = carried_wheel(str(tmp_path / "plugins" / "geors_qgis"))
    assert whl == str(tmp_path / "plugins" / wheels[0]) and install_source(str(tmp_path / "plugins" / "geors_qgis")) == whl
    with zipfile.ZipFile(whl) as wz:
        names = set(wz.namelist())
        meta = wz.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = wz.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "Name: geors-gis" in meta and "geors = geors.cli.main:main" in entry
    assert {"geors/cli/main.py", "geors/models/weights/r2cnn_neon_trees.safetensors"} <= names
    assert not any("__pycache__" in n for n in names)
    after = subprocess.run(["git", "status", "--porcelain", "--ignored", "--", "build", "geors_gis.egg-info"],
                           capture_output=True, text=True, cwd=REPO).stdout
    assert after == before  # built from a copy: no build/ or egg-info left in the checkout


def test_windows_processes_get_no_console_and_no_shell(monkeypatch, tmp_path):
    """Simulated Windows: every process the set-up starts (nvidia-smi, the base-Python probe, pip) gets
    CREATE_NO_WINDOW (no console flashing up from QGIS) and an argv list, never shell=True."""
    calls = []

    class FakePopen:
        def __init__(self, argv, **kw):
            calls.append((argv, kw))
            self.stdout = io.StringIO("Successfully installed x\n")
            self.returncode = 0

        def poll(self):
            return 0

        def wait(self):
            return 0

    def fake_run(argv, **kw):
        calls.append((argv, kw))
        return subprocess.CompletedProcess(argv, 0, '{"version": [3, 12], "venv": true, "pip": true, "torch": false}',
                                           "")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    S.nvidia_gpus(which=lambda n: r"C:\Windows\System32\nvidia-smi.exe", run=fake_run)
    S.inspect_python(r"C:\Program Files\Python312\python.exe", run=fake_run)
    code, cancelled = S._stream((r"C:\Jane Doe\venv\Scripts\python.exe", "-m", "pip", "install", "x"),
                                lambda line: None, lambda: False, str(tmp_path))
    assert code == 0 and not cancelled and len(calls) == 4
    for argv, kw in calls:
        assert isinstance(argv, list) and not kw.get("shell") and kw["creationflags"] == 0x08000000, (argv, kw)
