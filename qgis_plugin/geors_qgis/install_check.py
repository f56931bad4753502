""""Check installation": what the geors environment has, and the exact command for each missing piece.

Standard library only (runs the environment's Python in subprocesses); the
Processing algorithm formats the report.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from .environment import (
    ENV_VAR,
    INSTALL_COMMAND,
    EnvironmentNotFound,
    _no_window,
    environment_python,
    find_environment,
    install_source,
    models_list,
    probe,
    subprocess_env,
)
from .setup_env import GpuFacts, choose_torch, nvidia_gpus

SETTING_PATH = "Settings > Options > Processing > Providers > geors > 'geors Python environment'"

SETUP_ALGORITHM = "Processing Toolbox > geors > Setup > Set up environment"

NOT_FOUND_HELP = (
    "geors runs in its own Python environment (with torch), outside QGIS. To make one, run\n"
    f"    {SETUP_ALGORITHM}\n"
    "(also in the Plugins > geors menu; headless: qgis_process run geors:setup_environment): it creates a virtual "
    "environment in the QGIS profile folder, installs torch for this machine and geors, and sets the plugin to "
    "use it. By hand instead:\n"
    f"    {INSTALL_COMMAND}\n"
    f"then point the plugin at it: {SETTING_PATH} = ~/geors-env (the venv folder, its python, or a geors "
    f"executable), or start QGIS with {ENV_VAR}=~/geors-env/bin/python.\n"
    "Processing Toolbox > geors > Setup > Check installation shows what is found and what is missing."
)

# Asks the environment's interpreter about torch, CUDA and the SAM package without importing geors' models.
_PY_CHECK = r"""
import json, importlib.util, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = bool(torch.cuda.is_available())
    out["cuda_device"] = torch.cuda.get_device_name(0) if out["cuda"] else None
    out["cuda_build"] = torch.version.cuda
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
for mod in ("segment_anything", "rasterio", "distributed"):
    out[mod] = importlib.util.find_spec(mod) is not None
print(json.dumps(out))
"""


def _torch_index_args() -> str:
    """`` --index-url ...`` of the torch build for this machine (CPU-only where there is no NVIDIA GPU)."""
    choice = choose_torch("auto", nvidia_gpus())
    return f" --index-url {choice.index_url}" if choice.index_url else ""


def _item(status: str, what: str, detail: str = "", fix: str = "") -> dict:
    return {"status": status, "what": what, "detail": detail, "fix": fix}


def cuda_item(facts: dict, pip: str, gpu: GpuFacts | None = None, platform: str = sys.platform) -> dict:
    """The CUDA line of the report from the environment's torch facts (``_PY_CHECK``) and nvidia-smi.

    A CUDA build that sees no GPU is a driver or hardware matter, which reinstalling torch does not fix. A
    CPU-only build (``torch.version.cuda`` is None) is right where nvidia-smi finds no NVIDIA GPU; where it
    finds one, the report gives the command that installs the CUDA build (the index the driver supports on
    Windows, PyPI's default on Linux). ``gpu`` None: nvidia-smi was not asked.
    """
    build = facts.get("cuda_build")
    if facts.get("cuda"):
        return _item("ok", "CUDA", f"available: {facts.get('cuda_device')} (torch built for CUDA {build})")
    if build:
        return _item("info", "CUDA", f"torch is a CUDA {build} build, but it sees no usable GPU: geors runs on "
                     "the CPU (slower, works)",
                     "no torch reinstall needed: check that this machine has an NVIDIA GPU and a driver that "
                     f"supports CUDA {build} (nvidia-smi shows the driver's highest CUDA version)")
    detail = "this torch is a CPU-only build: geors runs on the CPU (slower, works)"
    if gpu is not None and not gpu.nvidia:
        return _item("info", "CUDA", f"{detail}; no NVIDIA GPU found ({gpu.detail}), so the CPU-only build is "
                                     "the right one for this machine")
    if gpu is not None and platform != "darwin":
        choice = choose_torch("cuda", gpu, platform)
        index = f" --index-url {choice.index_url}" if choice.index_url else ""
        return _item("info", "CUDA", f"{detail}, although this machine has {gpu.detail}",
                     f"{pip} --force-reinstall torch torchvision{index}")
    return _item("info", "CUDA", detail,
                 f"for an NVIDIA GPU: {pip} --force-reinstall torch torchvision --index-url "
                 "https://download.pytorch.org/whl/cuXYZ  (cuXYZ = the CUDA version your driver supports, "
                 "e.g. cu126; see https://pytorch.org/get-started/locally/)")


def check_installation(configured: str | None = None, feedback=None, environ: dict | None = None) -> dict:
    """Report on the geors environment: ``{"ok": bool, "environment": str, "items": [...]}``.

    Each item has ``status`` (ok, missing, optional, info), ``what``, ``detail``
    and ``fix`` (the exact command, or the setting to change). ``ok`` is false
    when geors cannot run a detection (no environment, no geors, no torch, no
    default model).
    """
    items: list[dict] = []

    def step(text: str) -> None:
        if feedback is not None:
            feedback.setProgressText(text)

    step("Looking for the geors environment")
    try:
        env = find_environment(configured, environ)
    except EnvironmentNotFound as exc:
        items.append(_item("missing", "geors environment", str(exc), NOT_FOUND_HELP))
        return {"ok": False, "environment": None, "items": items}
    items.append(_item("ok", "geors environment", f"{' '.join(env.argv[:1])} (from {env.source})"))

    step("Asking geors for its version and commands")
    pr = probe(env)
    py = environment_python(env)
    pip = f"{shlex.quote(py)} -m pip install" if py else "python3 -m pip install"
    if not pr.ok:
        items.append(_item("missing", "geors package", pr.error.splitlines()[-1] if pr.error else "does not run",
                           f'{SETUP_ALGORITHM} (a new environment), or {pip} "{install_source()}[sam]"   (in the '
                           'environment above; from the geors wheel or checkout: the PyPI package named geors is '
                           f'another project), or fix the setting: {SETTING_PATH}'))
        return {"ok": False, "environment": env.argv[0], "items": items}
    items.append(_item("ok", "geors", f"version {pr.version}; commands: {', '.join(pr.commands)}"))
    ok = True

    step("Checking torch and CUDA")
    facts: dict = {}
    if py:
        try:
            r = subprocess.run([py, "-c", _PY_CHECK], capture_output=True, text=True, timeout=180,
                               env=subprocess_env(), stdin=subprocess.DEVNULL, **_no_window())
            facts = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {}
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            facts = {}
    if facts:
        items.append(_item("info", "Python", f"{facts.get('python')} ({facts.get('executable')})"))
        if "torch" in facts:
            items.append(_item("ok", "torch", f"version {facts['torch']}"))
            items.append(cuda_item(facts, pip, nvidia_gpus()))
        else:
            ok = False
            items.append(_item("missing", "torch", facts.get("torch_error", "not importable"),
                               f"{pip} torch torchvision" + _torch_index_args()))
        if not facts.get("segment_anything"):
            items.append(_item("optional", "segment-anything package",
                               "SAM masks unavailable (the weight-free watershed outline is used)",
                               f"{pip} segment-anything"))
    else:
        items.append(_item("info", "torch / CUDA", "could not ask the environment's Python (interpreter not found)"))

    step("Listing models and SAM checkpoints")
    rows = models_list(env)
    if rows is None:
        items.append(_item("info", "models", "'geors models list --json' failed"))
    else:
        for r in rows:
            name = r.get("name", "?")
            if r.get("kind") == "sam":
                if r.get("installed"):
                    items.append(_item("ok", f"SAM checkpoint {name}", r.get("path", "")))
                else:
                    size = f"{r['size_bytes'] / 1e6:.0f} MB" if r.get("size_bytes") else ""
                    items.append(_item("optional", f"SAM checkpoint {name}", f"not downloaded {size}".strip(),
                                       env.display(["models", "download", name])))
            else:
                what = f"{r.get('kind', 'model')} {name}"
                if r.get("installed"):
                    classes = ", ".join(r.get("classes") or [])
                    items.append(_item("ok", what, f"classes: {classes}"))
                elif r.get("default") and r.get("kind") == "detector":
                    ok = False
                    items.append(_item("missing", what, f"weights not found: {r.get('path', '')}",
                                       f'{pip} --force-reinstall --no-deps "{install_source()}"'))
                else:
                    items.append(_item("optional", what, f"weights not found: {r.get('path', '')}",
                                       "pass your own model file instead (MODEL / --model)"))
    if not pr.has_segment:
        items.append(_item("info", "geors segment", "this geors has no 'segment' command yet; "
                                                    "'Segment scene' is hidden until it has"))
    return {"ok": ok, "environment": env.argv[0], "version": pr.version, "items": items}


def format_report(report: dict) -> str:
    """The report as text: one line per item, each missing piece followed by its fix."""
    lines = ["geors installation: " + ("OK" if report["ok"] else "NOT READY")]
    for it in report["items"]:
        lines.append(f"[{it['status']:>8}] {it['what']}: {it['detail']}".rstrip(": "))
        if it["fix"] and it["status"] != "ok":
            for i, fl in enumerate(it["fix"].splitlines()):
                lines.append(("           fix: " if i == 0 else "                ") + fl)
    return "\n".join(lines)
