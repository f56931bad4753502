"""Where the geors command lives, and what it can do.

QGIS's own Python never imports geors or torch: every algorithm runs the
``geors`` command of a separate Python environment in a subprocess. This module
finds that environment (plugin setting, ``$GEORS_PYTHON``, ``geors`` on PATH) and
asks it about itself (version, commands, model metadata). It uses the standard
library only, so it can be tested without QGIS.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

ENV_VAR = "GEORS_PYTHON"
"""Environment variable naming the geors environment: a Python interpreter, a venv folder or a geors executable."""

def geors_source() -> str:
    """Where geors is installed from: the checkout the plugin comes from (``geors_source.txt``, written by
    build_zip.py, or the checkout around ``qgis_plugin/``), else a placeholder to replace.

    Never the bare name ``geors``: on PyPI that is an unrelated project (issue 28).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, "geors_source.txt"), encoding="utf-8") as f:
            recorded = f.read().strip()
        if recorded:
            return recorded
    except OSError:
        pass
    root = os.path.dirname(os.path.dirname(here))
    if os.path.isfile(os.path.join(root, "pyproject.toml")):
        return root
    return "PATH/TO/geors-checkout"


def carried_wheel(plugin_dir: str | None = None) -> str | None:
    """The geors wheel the plugin archive carries (``wheels/*.whl``, written by build_zip.py), if any."""
    folder = os.path.join(plugin_dir or os.path.dirname(os.path.abspath(__file__)), "wheels")
    try:
        wheels = sorted(f for f in os.listdir(folder) if f.endswith(".whl"))
    except OSError:
        return None
    return os.path.join(folder, wheels[-1]) if wheels else None


def install_source(plugin_dir: str | None = None) -> str:
    """What geors is installed from: the wheel the plugin carries, else :func:`geors_source` (its checkout)."""
    return carried_wheel(plugin_dir) or geors_source()


def install_command(platform: str = sys.platform) -> str:
    """How to make a geors environment by hand (the plugin's *Set up environment* does it in one run): a venv,
    then geors with SAM from the geors checkout, never ``pip install geors`` (another project on PyPI)."""
    if platform == "win32":
        return (r'py -m venv %USERPROFILE%\geors-env && %USERPROFILE%\geors-env\Scripts\python -m pip install '
                f'"{install_source()}[sam]"')
    return f'python3 -m venv ~/geors-env && ~/geors-env/bin/python -m pip install "{install_source()}[sam]"'


INSTALL_COMMAND = install_command()
""":func:`install_command` for this platform."""

# Runs the click group exactly as the ``geors`` console script does.
_BOOT = "import sys; from geors.cli.main import main; sys.exit(main(prog_name='geors'))"

# Variables of QGIS's own Python and GDAL that would break another interpreter's
# packages (rasterio and pyproj wheels carry their own GDAL/PROJ data).
_DROP_VARS = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "GDAL_DATA", "GDAL_DRIVER_PATH",
              "PROJ_LIB", "PROJ_DATA", "QGIS_PREFIX_PATH")


class EnvironmentNotFound(Exception):
    """No usable geors environment; the message says what was tried and the command that fixes it."""


@dataclass(frozen=True)
class GeorsEnvironment:
    """A way to run ``geors``: the argv prefix, and where it came from.

    Attributes:
        argv: command prefix; append CLI arguments (``argv + ["detect", ...]``).
        source: how it was found ("plugin setting", "$GEORS_PYTHON", "PATH").
        python: the interpreter, when known (used for the torch/CUDA check).
    """

    argv: tuple[str, ...]
    source: str
    python: str | None = None

    def command(self, args: list[str]) -> list[str]:
        return [*self.argv, *args]

    def display(self, args: list[str]) -> str:
        """A copy-pasteable shell line running ``geors ARGS`` in this environment.

        Uses the ``geors`` script beside the interpreter when there is one, so the
        line reads like the CLI documentation.
        """
        exe = list(self.argv)
        if self.python and len(self.argv) > 1:
            script = os.path.join(os.path.dirname(self.python), "geors.exe" if sys.platform == "win32" else "geors")
            if os.path.isfile(script):
                exe = [script]
        if sys.platform == "win32":  # cmd.exe quoting: "C:\\Program Files\\..." (shlex would use ' quotes)
            return subprocess.list2cmdline([*exe, *args])
        return shlex.join([*exe, *args])


def subprocess_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a geors subprocess: QGIS's Python/GDAL variables removed, unbuffered UTF-8 output."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _DROP_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _venv_python(folder: str) -> str | None:
    for rel in ("bin/python3", "bin/python", "Scripts/python.exe", "python.exe"):
        p = os.path.join(folder, rel)
        if os.path.isfile(p):
            return p
    return None


def _from_path(path: str, source: str) -> GeorsEnvironment:
    path = os.path.expanduser(path.strip())
    if os.path.isdir(path):
        python = _venv_python(path)
        if python is None:
            raise EnvironmentNotFound(f"{source} points to the folder {path}, which holds no bin/python "
                                      "(or Scripts\\python.exe): give a virtual environment folder or a Python "
                                      "interpreter.")
        return GeorsEnvironment((python, "-c", _BOOT), source, python)
    if not os.path.isfile(path):
        raise EnvironmentNotFound(f"{source} points to {path}, which does not exist.")
    name = os.path.basename(path).lower()
    if name.startswith("geors"):
        return GeorsEnvironment((path,), source, None)
    return GeorsEnvironment((path, "-c", _BOOT), source, path)


def find_environment(configured: str | None = None, environ: dict[str, str] | None = None) -> GeorsEnvironment:
    """The geors environment to use, in this order: ``configured`` (the plugin setting), ``$GEORS_PYTHON``,
    a ``geors`` executable on PATH.

    A setting or variable that is given but wrong is an error (it is not silently
    skipped). Raises :class:`EnvironmentNotFound` with the fix when nothing fits.
    """
    environ = os.environ if environ is None else environ
    if configured and configured.strip():
        return _from_path(configured, "the plugin setting 'geors Python environment'")
    if environ.get(ENV_VAR, "").strip():
        return _from_path(environ[ENV_VAR], f"${ENV_VAR}")
    exe = shutil.which("geors", path=environ.get("PATH"))
    if exe:
        return GeorsEnvironment((exe,), "PATH", None)
    raise EnvironmentNotFound(
        "No geors environment found: the plugin setting (Processing > Options > Providers > geors) is empty, "
        f"${ENV_VAR} is not set and there is no 'geors' command on PATH.")


@dataclass
class Probe:
    """What an environment says about itself (filled by :func:`probe`)."""

    ok: bool
    version: str = ""
    commands: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def has_segment(self) -> bool:
        return "segment" in self.commands


def run_quick(env: GeorsEnvironment, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run a short geors command and capture its output (never raises for a failing command)."""
    try:
        return subprocess.run(env.command(args), capture_output=True, text=True, timeout=timeout,
                              env=subprocess_env(), stdin=subprocess.DEVNULL, **_no_window())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(env.command(args), 127, "", str(exc))


def _no_window() -> dict:
    if sys.platform == "win32":  # no console window flashing up from the QGIS GUI
        return {"creationflags": subprocess.CREATE_NO_WINDOW}
    return {}


def parse_commands(help_text: str) -> list[str]:
    """Command names from click's ``--help`` output (the ``Commands:`` section)."""
    names, inside = [], False
    for line in help_text.splitlines():
        if line.strip() == "Commands:":
            inside = True
            continue
        if inside:
            m = re.match(r"^  (\S+)", line)
            if m:
                names.append(m.group(1))
            elif line.strip() and not line.startswith(" "):
                break
    return names


def probe(env: GeorsEnvironment) -> Probe:
    """Version and command list of ``env`` (two quick calls, no torch import)."""
    ver = run_quick(env, ["--version"])
    if ver.returncode != 0:
        return Probe(False, error=(ver.stderr or ver.stdout).strip()[-2000:])
    m = re.search(r"version\s+(\S+)", ver.stdout)
    helped = run_quick(env, ["--help"])
    return Probe(True, version=m.group(1) if m else ver.stdout.strip(), commands=parse_commands(helped.stdout))


def model_info(env: GeorsEnvironment, name: str) -> dict | None:
    """``geors models info NAME --json`` as a dict, or None when the command fails."""
    r = run_quick(env, ["models", "info", name, "--json"], timeout=120)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def models_list(env: GeorsEnvironment) -> list[dict] | None:
    """``geors models list --json``, or None when the command fails."""
    r = run_quick(env, ["models", "list", "--json"], timeout=120)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def environment_python(env: GeorsEnvironment) -> str | None:
    """The interpreter behind ``env``: the configured one, or the ``#!`` line of a geors script."""
    if env.python:
        return env.python
    exe = env.argv[0]
    try:
        with open(exe, "rb") as f:
            first = f.readline(500).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if first.startswith("#!"):
        parts = shlex.split(first[2:])
        if parts and os.path.basename(parts[0]) == "env" and len(parts) > 1:
            parts = parts[1:]
        if parts and os.path.basename(parts[0]).lower().startswith("python"):
            return parts[0]
    for name in ("python3", "python", "python.exe"):  # Windows: Scripts\geors.exe beside python.exe
        cand = os.path.join(os.path.dirname(exe), name)
        if os.path.isfile(cand):
            return cand
    return None


# Describes every command's options from click's own objects (exact types, choices, defaults; no torch import).
_DESCRIBE = r"""
import json, click
from geors.cli.main import main

def walk(cmd, path):
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from walk(sub, path + [name])
    else:
        yield path, cmd

out = {}
for path, cmd in walk(main, []):
    params = []
    for p in cmd.params:
        if not isinstance(p, click.Option):
            params.append({"argument": p.name, "nargs": p.nargs, "required": p.required})
            continue
        longs = [o for o in p.opts if o.startswith("--")] or list(p.opts)
        try:  # the resolved default (click >= 8.2 keeps an UNSET sentinel in p.default for flags)
            default = p.get_default(click.Context(cmd), call=False)
        except Exception:
            default = None
        if callable(default) or type(default).__name__ == "Sentinel":
            default = False if p.is_flag else None
        params.append({"flag": longs[0], "off_flag": (p.secondary_opts or [""])[0], "is_flag": bool(p.is_flag),
                       "multiple": bool(p.multiple), "type": getattr(p.type, "name", str(p.type)),
                       "choices": [str(c) for c in (getattr(p.type, "choices", None) or [])],
                       "default": default, "help": p.help or "", "required": bool(p.required),
                       "hidden": bool(getattr(p, "hidden", False))})
    out[" ".join(path)] = {"help": cmd.help or "", "params": params}
import geors
out["__geors__"] = {"version": getattr(geors, "__version__", "")}
try:  # the mask engines --sam takes: the weight-free engine classes (their method name) and the SAM kinds
    import geors.masks
    from geors.masks.base import MaskEngine
    from geors.masks.sam import SAM_KINDS

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    free = sorted({s.method for s in subclasses(MaskEngine) if s.__module__.startswith("geors.")
                   and s.method not in ("base", "") and not s.method.startswith("sam")})
    out["__engines__"] = ["auto", *free, *SAM_KINDS]
except Exception:
    pass
print(json.dumps(out, default=str))
"""


def describe(env: GeorsEnvironment) -> dict | None:
    """Every command's options, read from the environment's click objects: ``{"run": {"params": [...]}, ...}``.

    None when the environment's Python is unknown or the call fails (then the
    plugin falls back to its own option tables and ``--help`` parsing).
    """
    py = environment_python(env)
    if py is None:
        return None
    try:
        r = subprocess.run([py, "-c", _DESCRIBE], capture_output=True, text=True, timeout=120, env=subprocess_env(),
                           stdin=subprocess.DEVNULL, **_no_window())
        return json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def probe_from_description(description: dict) -> Probe:
    """The :class:`Probe` answers (version, top-level commands) read from a :func:`describe` result."""
    commands = sorted({k.split()[0] for k in description if not k.startswith("__")})
    return Probe(True, version=str(description.get("__geors__", {}).get("version", "")), commands=commands)


def parse_help_options(help_text: str) -> list[dict]:
    """Options of one command from click's ``--help`` output.

    Returns dicts: ``flag`` (``--tile``), ``metavar`` (``INTEGER``, ``[a|b]`` or
    "" for a switch), ``help``, ``default`` (str or None), ``required``.
    """
    out: list[dict] = []
    inside = False
    current: dict | None = None
    for line in help_text.splitlines():
        if line.strip() == "Options:":
            inside = True
            continue
        if not inside:
            continue
        m = re.match(r"^  (?:-\w, )?(--[\w-]+)(?: (\S+))?\s*(.*)$", line)
        if m:
            current = {"flag": m.group(1), "metavar": m.group(2) or "", "help": m.group(3).strip()}
            out.append(current)
        elif current is not None and line.startswith("   "):
            current["help"] = (current["help"] + " " + line.strip()).strip()
        elif line.strip() and not line.startswith(" "):
            break
    for o in out:
        d = re.search(r"\[default: ([^\]]*)\]", o["help"])
        o["default"] = d.group(1) if d else None
        o["required"] = "[required]" in o["help"]
        o["help"] = re.sub(r"\s*\[(default: [^\]]*|required)\]", "", o["help"]).strip()
    return [o for o in out if o["flag"] not in ("--help", "--progress")]
