"""Set up a geors environment from the plugin: a venv, torch for this machine, geors, then a check.

The steps are plain argv lists (no shell), planned by :func:`plan_setup` from
facts that the tests can simulate (platform, NVIDIA GPU, what the base Python
already has) and run by :func:`run_setup` with progress, a log file and cancel.
Standard library only, like :mod:`environment`; the Processing algorithm in
:mod:`setup_algorithm` feeds it the dialog's values.

Torch is installed in its own pip call before geors, so that pip finds the
requirement ``torch`` already satisfied by the build chosen for this machine:
the CPU-only wheels (download.pytorch.org/whl/cpu, ~200 MB instead of ~2.5 GB of
CUDA libraries) where no NVIDIA GPU is found, the CUDA build where one is.
"""

from __future__ import annotations

import glob
import json
import ntpath
import os
import posixpath
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .environment import _no_window, subprocess_env

DIST_NAME = "geors-gis"
"""The project's distribution name (pyproject.toml). Import name and command stay ``geors``; the PyPI name
``geors`` belongs to an unrelated project, so a requirement never names it."""

MIN_PYTHON = (3, 11)
"""geors' ``requires-python``."""

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""PyTorch's index of CPU-only wheels (Linux, Windows, macOS)."""

CUDA_INDEXES = ((13, 0, "cu130"), (12, 8, "cu128"), (12, 6, "cu126"), (11, 8, "cu118"))
"""CUDA builds on download.pytorch.org, newest first. Windows' default (PyPI) torch is CPU-only, so a Windows
machine with an NVIDIA GPU gets the newest build its driver supports (``CUDA Version`` of nvidia-smi)."""

CUDA_INDEX_FALLBACK = "cu126"
"""The Windows CUDA build when nvidia-smi does not say which CUDA version its driver supports."""

TORCH_MODES = ("auto", "cpu", "cuda", "pypi")
"""``auto``: CPU-only where no NVIDIA GPU is found, else CUDA; ``pypi``: whatever ``pip install torch`` picks."""

LOG_NAME = "geors-setup.log"
"""The log file, in the environment folder (every command and every line pip printed)."""

# Asks the new environment which geors and torch it has (run with -I: the current folder is not on sys.path,
# so a geors checkout there cannot stand in for the installed package).
_VERIFY = r"""
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import geors
    out["geors"] = getattr(geors, "__version__", "?")
    out["geors_file"] = geors.__file__
except Exception as exc:
    out["geors_error"] = f"{type(exc).__name__}: {exc}"
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda_build"] = torch.version.cuda
    out["cuda"] = bool(torch.cuda.is_available())
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

# Is a Python fit to make the environment: its version, venv/ensurepip (Debian ships them apart, as
# python3-venv) and whether it already has torch (for "reuse its packages").
_BASE_CHECK = r"""
import importlib.util, json, sys
print(json.dumps({"version": list(sys.version_info[:2]), "executable": sys.executable,
                  "venv": all(importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip")),
                  "pip": importlib.util.find_spec("pip") is not None,
                  "torch": importlib.util.find_spec("torch") is not None}))
"""


class SetupError(Exception):
    """The set-up cannot go on; the message names the option or the step and what to do."""


@dataclass(frozen=True)
class GpuFacts:
    """What nvidia-smi says: the GPUs it lists and the highest CUDA version its driver supports."""

    gpus: tuple[str, ...] = ()
    driver_cuda: tuple[int, int] | None = None
    detail: str = "nvidia-smi not found"

    @property
    def nvidia(self) -> bool:
        return bool(self.gpus)


@dataclass(frozen=True)
class TorchChoice:
    """Which torch build to install and why. ``index_url`` None: PyPI's default; ``install`` False: none."""

    build: str
    index_url: str | None
    reason: str
    install: bool = True


@dataclass(frozen=True)
class Step:
    """One command of the set-up. ``weight``: its share of the progress bar; ``kind``: venv, pip or verify."""

    name: str
    argv: tuple[str, ...]
    weight: float
    kind: str


@dataclass
class SetupPlan:
    folder: str
    python: str
    steps: list[Step]
    torch: TorchChoice
    source: str
    log_path: str


def _path_module(platform: str):
    return ntpath if platform == "win32" else posixpath


def venv_python(folder: str, platform: str = sys.platform) -> str:
    """The interpreter of the venv ``folder``: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere."""
    if platform == "win32":
        return ntpath.join(folder, "Scripts", "python.exe")
    return posixpath.join(folder, "bin", "python")


def default_folder(profile_dir: str, platform: str = sys.platform) -> str:
    """Where the environment goes by default: ``geors/venv`` in the QGIS profile folder."""
    return _path_module(platform).join(profile_dir, "geors", "venv")


def parse_nvidia_smi(listing: str, summary: str) -> GpuFacts:
    """GPU names from ``nvidia-smi -L`` and the driver's CUDA version from plain ``nvidia-smi``."""
    gpus = tuple(m.group(1).strip() for m in re.finditer(r"^GPU \d+: (.+?)(?: \(UUID: [^)]*\))?$", listing, re.M))
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", summary)
    cuda = (int(m.group(1)), int(m.group(2))) if m else None
    detail = (f"{len(gpus)} NVIDIA GPU(s): {', '.join(gpus)}" if gpus else "nvidia-smi lists no GPU")
    if cuda:
        detail += f"; driver supports CUDA {cuda[0]}.{cuda[1]}"
    return GpuFacts(gpus, cuda, detail)


def nvidia_gpus(which: Callable[[str], str | None] = shutil.which, run: Callable = subprocess.run) -> GpuFacts:
    """Asks nvidia-smi (absent: no NVIDIA GPU, whatever else the machine has)."""
    exe = which("nvidia-smi")
    if exe is None:
        return GpuFacts()
    try:
        kw = {"capture_output": True, "text": True, "timeout": 30, "stdin": subprocess.DEVNULL, **_no_window()}
        listing = run([exe, "-L"], **kw)
        summary = run([exe], **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return GpuFacts(detail=f"nvidia-smi did not run: {exc}")
    if listing.returncode != 0:
        return GpuFacts(detail=f"nvidia-smi failed: {(listing.stderr or listing.stdout).strip()[-300:]}")
    return parse_nvidia_smi(listing.stdout, summary.stdout if summary.returncode == 0 else "")


def cuda_index(driver_cuda: tuple[int, int] | None) -> str:
    """The newest PyTorch CUDA build that the driver supports (``cu128`` for a driver with CUDA 12.9)."""
    if driver_cuda is None:
        return CUDA_INDEX_FALLBACK
    for major, minor, tag in CUDA_INDEXES:
        if driver_cuda >= (major, minor):
            return tag
    return CUDA_INDEXES[-1][2]


def choose_torch(mode: str, gpu: GpuFacts, platform: str = sys.platform, index_url: str | None = None,
                 base_has_torch: bool = False, reuse_packages: bool = False) -> TorchChoice:
    """The torch build for this machine.

    Args:
        mode: one of :data:`TORCH_MODES`.
        gpu: what nvidia-smi said (:func:`nvidia_gpus`).
        platform: ``sys.platform`` of the machine (``linux``, ``win32``, ``darwin``).
        index_url: an index given by the user; it replaces the choice of index.
        base_has_torch, reuse_packages: the venv sees the base Python's packages and that Python has torch:
            nothing is downloaded.
    """
    if mode not in TORCH_MODES:
        raise SetupError(f"TORCH: unknown choice {mode!r}; use one of {', '.join(TORCH_MODES)}.")
    if reuse_packages and base_has_torch:
        return TorchChoice("reused", None, "the base Python's torch is reused (REUSE_PACKAGES)", install=False)
    if index_url:
        return TorchChoice("custom", index_url, f"the index given: {index_url}")
    if mode == "pypi":
        return TorchChoice("pypi", None, "PyPI's default torch build for this platform")
    if platform == "darwin":
        if mode == "cuda":
            raise SetupError("TORCH = cuda: there is no CUDA build of torch for macOS; use auto (PyPI's build, "
                             "which uses the CPU, or the GPU through MPS).")
        if mode == "cpu":
            return TorchChoice("cpu", CPU_INDEX, "CPU-only build, as asked")
        return TorchChoice("pypi", None, "macOS: PyPI's torch (no CUDA on macOS)")
    if mode == "cpu" or (mode == "auto" and not gpu.nvidia):
        why = "as asked" if mode == "cpu" else f"no NVIDIA GPU found ({gpu.detail})"
        return TorchChoice("cpu", CPU_INDEX, f"CPU-only build, {why}: about 200 MB instead of 2.5 GB")
    why = "as asked" if mode == "cuda" else f"found {gpu.detail}"
    if platform == "win32":  # PyPI's Windows wheels are CPU-only
        tag = cuda_index(gpu.driver_cuda)
        return TorchChoice("cuda", f"https://download.pytorch.org/whl/{tag}", f"CUDA build {tag}, {why}")
    return TorchChoice("cuda", None, f"PyPI's default build, which is the CUDA build on Linux, {why}")


def is_url(source: str) -> bool:
    return bool(re.match(r"^(git\+)?(https?|ssh|file)://", source))


def geors_requirement(source: str, extras: tuple[str, ...] = ("sam",)) -> str:
    """The pip requirement for geors from a wheel, a checkout folder or a URL, never the PyPI name ``geors``.

    A wheel or folder gets its extras appended (``/path/geors[sam]``); a URL becomes
    ``geors-gis[sam] @ URL``.
    """
    tail = f"[{','.join(extras)}]" if extras else ""
    if is_url(source):
        return f"{DIST_NAME}{tail} @ {source}"
    return f"{source}{tail}"


def check_source(source: str) -> None:
    """A SOURCE that is neither a URL nor an existing wheel/checkout is an error naming it."""
    if is_url(source):
        return
    if source.endswith(".whl") and os.path.isfile(source):
        return
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "pyproject.toml")):
        return
    raise SetupError(f"SOURCE: {source} is neither a geors wheel (.whl), a geors checkout (a folder with "
                     "pyproject.toml) nor a URL (git+https://...). Give one of these; the plugin archive built "
                     "by qgis_plugin/build_zip.py carries a wheel.")


def pip_install(python: str, args: list[str]) -> tuple[str, ...]:
    """``python -m pip install ...`` with messages pip keeps plain (no colour, no version check)."""
    return (python, "-m", "pip", "install", "--disable-pip-version-check", "--no-color", *args)


def with_raw_progress(argv: tuple[str, ...]) -> tuple[str, ...]:
    """A pip install command that prints ``Progress DONE of TOTAL`` lines while it downloads (pip >= 24.1)."""
    i = argv.index("install") + 1
    return (*argv[:i], "--progress-bar", "raw", *argv[i:])


def pip_has_raw_progress(python: str, run: Callable = subprocess.run) -> bool:
    """Whether this pip knows ``--progress-bar raw`` (older pips refuse the option, so it is asked first)."""
    try:
        r = run([python, "-m", "pip", "install", "--help"], capture_output=True, text=True, timeout=60,
                env=subprocess_env(), stdin=subprocess.DEVNULL, **_no_window())
    except (OSError, subprocess.TimeoutExpired):
        return False
    m = re.search(r"--progress-bar <progress_bar>(.*?)(?:\n  -|\Z)", r.stdout, re.S)
    return bool(m and re.search(r"\braw\b", m.group(1)))


def plan_setup(folder: str, base_python: str, source: str, torch: TorchChoice, platform: str = sys.platform,
               reuse_packages: bool = False, extras: tuple[str, ...] = ("sam",)) -> SetupPlan:
    """The commands that make the environment in ``folder`` (every one an argv list: no shell quoting)."""
    py = venv_python(folder, platform)
    # reusing: no pip/setuptools of the venv's own (ensurepip's older setuptools would shadow the base's and
    # make pip download a newer one for torch); the base Python's pip installs into the venv
    reuse = ["--system-site-packages", "--without-pip"] if reuse_packages else []
    venv = [base_python, "-m", "venv", *reuse, folder]
    steps = [Step("create the virtual environment", tuple(venv), 5.0, "venv")]
    if torch.install:
        idx = ["--index-url", torch.index_url] if torch.index_url else []
        steps.append(Step(f"install torch ({torch.build})", pip_install(py, ["torch", "torchvision", *idx]),
                          60.0, "pip"))
    flags = []
    if reuse_packages and not is_url(source) and not source.endswith(".whl"):
        flags.append("--no-build-isolation")  # build with the reused setuptools: nothing to download
    steps.append(Step("install geors", pip_install(py, [*flags, geors_requirement(source, extras)]),
                      30.0, "pip"))
    steps.append(Step("check the environment", (py, "-I", "-c", _VERIFY), 5.0, "verify"))
    return SetupPlan(folder, py, steps, torch, source, os.path.join(folder, LOG_NAME))


def inspect_python(python: str, run: Callable = subprocess.run) -> dict:
    """Version, venv support and torch of a candidate base Python (an ``error`` key when it does not run)."""
    try:
        r = run([python, "-I", "-c", _BASE_CHECK], capture_output=True, text=True, timeout=60,
                env=subprocess_env(), stdin=subprocess.DEVNULL, **_no_window())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip()[-300:]}
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unexpected answer: {r.stdout[-200:]}"}


_WELL_KNOWN = {
    # python.org and Homebrew on macOS (a QGIS started from the Finder has only /usr/bin:/bin on PATH, whose
    # python3 is Apple's 3.9), python.org's per-user install on Windows
    "darwin": ["/Library/Frameworks/Python.framework/Versions/3.1[1-9]/bin/python3",
               "/opt/homebrew/bin/python3", "/usr/local/bin/python3"],
    "win32": [os.path.join(os.environ.get("LOCALAPPDATA", r"C:\Users\Default\AppData\Local"), "Programs", "Python",
                           "Python31[1-9]", "python.exe")],
}


def base_python_candidates(platform: str = sys.platform, which: Callable[[str], str | None] = shutil.which,
                           base_prefix: str = sys.base_prefix, executable: str = sys.executable,
                           globber: Callable[[str], list[str]] = glob.glob) -> list[str]:
    """Pythons that may create the venv, best first: QGIS's own (its install folder), PATH's, then the usual
    install places.

    QGIS's ``sys.executable`` is often the QGIS program itself (Windows, macOS), so its Python is looked
    for in ``sys.base_prefix`` as well.
    """
    pm = _path_module(platform)
    out = []
    if pm.basename(executable).lower().startswith("python"):
        out.append(executable)
    if platform == "win32":
        out.append(pm.join(base_prefix, "python.exe"))
        names = ["python", "python3"]
    else:
        out += [pm.join(base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"),
                pm.join(base_prefix, "bin", "python3")]
        names = ["python3", "python"]
    out += [p for p in (which(n) for n in names) if p]
    for pattern in _WELL_KNOWN.get(platform, []):
        out += sorted(globber(pattern), reverse=True)  # the newest version first
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def find_base_python(given: str | None = None, platform: str = sys.platform,
                     candidates: list[str] | None = None, inspect: Callable[[str], dict] = inspect_python,
                     reuse_packages: bool = False) -> tuple[str, dict]:
    """The Python that creates the venv: ``given`` (BASE_PYTHON) or the first fit candidate.

    Fit: Python >= 3.11 with venv and ensurepip (and pip, whose copy the venv uses when it reuses the base's
    packages). Raises :class:`SetupError` with what was tried.
    """
    def fit(facts: dict) -> str:
        if "error" in facts:
            return f"does not run ({facts['error']})"
        if tuple(facts["version"]) < MIN_PYTHON:
            return f"is Python {'.'.join(map(str, facts['version']))}; geors needs 3.11 or newer"
        if not facts["venv"]:
            return "has no venv/ensurepip module (Debian/Ubuntu: apt install python3-venv)"
        if reuse_packages and not facts.get("pip"):
            return "has no pip, which REUSE_PACKAGES uses"
        return ""

    if given:
        facts = inspect(given)
        why = fit(facts)
        if why:
            raise SetupError(f"BASE_PYTHON: {given} {why}.")
        return given, facts
    tried = []
    for cand in candidates if candidates is not None else base_python_candidates(platform):
        if not os.path.isfile(cand) and os.path.basename(cand) != cand:
            continue
        facts = inspect(cand)
        why = fit(facts)
        if not why:
            return cand, facts
        tried.append(f"{cand} {why}")
    raise SetupError("No Python 3.11 or newer with venv was found to create the environment"
                     + (f" (tried: {'; '.join(tried)})" if tried else "")
                     + ". Install Python 3.11+ (python.org, or your package manager) and give its interpreter "
                       "as BASE_PYTHON.")


class PipProgress:
    """Turns pip's output into the fraction of one pip step done and a short progress text.

    pip prints ``Collecting``/``Processing``/``Requirement already satisfied`` per requirement,
    ``Downloading NAME (SIZE)``, with ``--progress-bar raw`` ``Progress DONE of TOTAL`` (bytes) during a
    download, then ``Installing collected packages`` and ``Successfully installed``. The number of
    requirements is not known in advance, so collecting approaches 60% of the step, each download is shown
    by its bytes, installing is 80%.
    """

    _COLLECT = re.compile(r"^(?:Collecting|Processing|Obtaining|Requirement already satisfied:) +(\S+)")
    _DOWNLOAD = re.compile(r"^\s*Downloading +(\S+)(?: \(([^)]+)\))?")
    _RAW = re.compile(r"\bProgress (\d+) of (\d+|\?)(?: bytes)?$")

    def __init__(self):
        self.fraction = 0.0
        self.collected = 0
        self.text: str | None = None
        self.errors: list[str] = []
        self.download: str | None = None

    def feed(self, line: str) -> bool:
        """Reads one line; True when the fraction or the text changed."""
        text = line.strip()
        if m := self._RAW.search(text):
            done, total = int(m.group(1)), int(m.group(2)) if m.group(2) != "?" else 0
            if total and self.download:
                self.text = f"downloading {self.download}: {100 * done // total}% of {total / 1e6:.0f} MB"
                return True
            return False
        if m := self._COLLECT.match(text):
            self.collected += 1
            self._advance(0.6 * (1 - 0.85 ** self.collected))
            self.text = f"collecting {m.group(1)} ({self.collected} requirements)"
            return True
        if m := self._DOWNLOAD.match(text):
            name = m.group(1).rsplit("/", 1)[-1]
            self.download = name.split("-")[0] if name.endswith(".whl") else name
            self.text = f"downloading {name}" + (f" ({m.group(2)})" if m.group(2) else "")
            return True
        if text.startswith("Installing collected packages:"):
            self._advance(0.8)
            self.text = "installing " + text.split(":", 1)[1].strip()[:200]
            return True
        if text.startswith("Successfully installed"):
            self._advance(1.0)
            self.text = text[:200]
            return True
        if text.startswith("ERROR:"):
            self.errors.append(text[len("ERROR:"):].strip())
        return False

    @classmethod
    def is_raw(cls, line: str) -> bool:
        """A ``--progress-bar raw`` line (``Progress DONE of TOTAL``)."""
        return cls._RAW.search(line.strip()) is not None

    def _advance(self, value: float) -> None:
        self.fraction = max(self.fraction, min(value, 1.0))


@dataclass
class SetupResult:
    ok: bool
    cancelled: bool = False
    facts: dict = field(default_factory=dict)
    failed_step: str | None = None
    errors: list[str] = field(default_factory=list)
    log_path: str = ""


def _stream(argv: tuple[str, ...], on_line: Callable[[str], None], is_cancelled: Callable[[], bool],
            cwd: str | None, poll_s: float = 0.2) -> tuple[int, bool]:
    """Run ``argv`` (no shell), passing each output line (stdout and stderr merged) to ``on_line``.

    Returns (exit status, cancelled). Cancel terminates the process (pip leaves a half-installed package at
    worst, which the next run replaces).
    """
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, encoding="utf-8", errors="replace", bufsize=1, env=subprocess_env(),
                            cwd=cwd, **_no_window())
    q: queue.Queue = queue.Queue()

    def pump():
        for line in iter(proc.stdout.readline, ""):
            q.put(line.rstrip("\r\n"))
        q.put(None)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    cancelled, killed_at, done = False, None, False
    while not done:
        if is_cancelled() and not cancelled:
            cancelled, killed_at = True, time.monotonic()
            proc.terminate()
        elif cancelled and proc.poll() is None and time.monotonic() - killed_at > 10:
            proc.kill()
        try:
            line = q.get(timeout=poll_s)
        except queue.Empty:
            continue
        if line is None:
            done = True
        else:
            on_line(line)
    code = proc.wait()
    t.join(timeout=1)
    proc.stdout.close()
    return code, cancelled


def run_setup(plan: SetupPlan, feedback, stream: Callable = _stream,
              raw_progress: Callable[[str], bool] = pip_has_raw_progress) -> SetupResult:
    """Run the plan's steps in order, with one progress bar over all of them and everything in the log file.

    ``feedback`` has the QgsProcessingFeedback methods ``isCanceled``, ``setProgress``, ``setProgressText``,
    ``pushInfo``, ``pushCommandInfo``, ``pushConsoleInfo``, ``reportError``.
    """
    os.makedirs(plan.folder, exist_ok=True)
    total = sum(s.weight for s in plan.steps) or 1.0
    result = SetupResult(ok=False, log_path=plan.log_path)
    done_weight = 0.0
    with open(plan.log_path, "a", encoding="utf-8") as log:
        def write(text: str) -> None:
            log.write(text + "\n")
            log.flush()

        write(f"=== geors set-up {time.strftime('%Y-%m-%d %H:%M:%S')}: {plan.folder}")
        write(f"torch: {plan.torch.reason}")
        raw: bool | None = None  # asked once the venv (and its pip) exists
        for step in plan.steps:
            argv = step.argv
            if step.kind == "pip":
                raw = raw_progress(plan.python) if raw is None else raw
                argv = with_raw_progress(argv) if raw else argv
            feedback.setProgressText(step.name)
            feedback.pushCommandInfo(display_command(argv))
            write(f"--- {step.name}\n$ {display_command(argv)}")
            pip = PipProgress()
            out: list[str] = []
            start = done_weight

            def on_line(line: str, step=step, pip=pip, out=out, start=start) -> None:
                raw_line = step.kind == "pip" and PipProgress.is_raw(line)
                if not raw_line:  # 4 a second while pip downloads: the bar and its text show them
                    write(line)
                    out.append(line)
                if step.kind == "verify":
                    return
                if not raw_line:
                    feedback.pushConsoleInfo(line)
                if step.kind == "pip" and pip.feed(line):
                    feedback.setProgress(100.0 * (start + step.weight * pip.fraction) / total)
                    if pip.text:
                        feedback.setProgressText(f"{step.name}: {pip.text}")

            code, cancelled = stream(argv, on_line, feedback.isCanceled, plan.folder)
            write(f"(exit status {code})")
            if cancelled:
                result.cancelled, result.failed_step = True, step.name
                write("cancelled")
                return result
            if code != 0:
                result.failed_step = step.name
                result.errors = pip.errors or [ln for ln in out if ln.strip()][-5:]
                return result
            if step.kind == "verify":
                try:
                    result.facts = json.loads(next(ln for ln in reversed(out) if ln.startswith("{")))
                except (StopIteration, ValueError):
                    result.failed_step, result.errors = step.name, out[-5:]
                    return result
                write(json.dumps(result.facts))
            done_weight += step.weight
            feedback.setProgress(100.0 * done_weight / total)
        missing = [k for k in ("geors", "torch") if k not in result.facts]
        if missing:
            result.failed_step = "check the environment"
            result.errors = [result.facts.get(f"{k}_error", f"{k} not importable") for k in missing]
            return result
        result.ok = True
        write("=== done")
    return result


def torch_summary(facts: dict) -> str:
    """One line on the installed torch: CPU-only or CUDA build, and whether it sees a GPU."""
    if "torch" not in facts:
        return "torch is not importable"
    if not facts.get("cuda_build"):
        return f"torch {facts['torch']}, a CPU-only build"
    seen = "sees a GPU" if facts.get("cuda") else "sees no usable GPU (geors runs on the CPU)"
    return f"torch {facts['torch']}, a CUDA {facts['cuda_build']} build that {seen}"


def display_command(argv: tuple[str, ...] | list[str], platform: str = sys.platform) -> str:
    """A command line to copy into this platform's shell (cmd.exe quoting on Windows, POSIX elsewhere)."""
    return subprocess.list2cmdline(list(argv)) if platform == "win32" else shlex.join(argv)
