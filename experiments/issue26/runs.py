"""Running the ``geors`` CLI for the trials: one process per command, in its own session (process group),
one thread, no ``GEORS_FAULT`` inherited; the command lines the families share; a trial's record."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TILING = ["--tile", "256", "--overlap", "64"]
ONE_THREAD = ["--threads", "1"]
WARN = "2 or a warning"
MODES = {"threads": [], "workers2": ["--workers", "2"], "local": ["--scheduler", "local", "--workers", "2"],
         "synchronous": ["--scheduler", "synchronous"]}


@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False


@dataclass
class Trial:
    family: str
    group: str  # e.g. "refuse" / "control", the execution mode, the signal
    name: str
    cmd: str
    ok: bool
    why: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def geors_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEORS_FAULT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def geors_cmd() -> list[str]:
    exe = shutil.which("geors")
    return [exe] if exe else [sys.executable, "-c", "from geors.cli.main import main; main()"]


def shown(args: list) -> str:
    return "geors " + " ".join(str(a) if " " not in str(a) else repr(str(a)) for a in args)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_members(pgid: int) -> list[int]:
    """Live processes of this process group (zombies excluded)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def run_geors(args: list, cwd: Path, timeout: float = 120, env: dict | None = None, fsize: int | None = None
              ) -> Result:
    """One geors process in its own session (so a hang can be killed with everything it started); ``fsize``:
    the largest file it may write (RLIMIT_FSIZE, a full disk as the process sees it)."""
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    t0 = time.monotonic()
    p = subprocess.Popen(geors_cmd() + [str(a) for a in args], cwd=cwd, env=geors_env(env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=limit if fsize else None)
    try:
        out, err = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(p.pid)
        out, err = p.communicate()
        timed_out = True
    kill_group(p.pid)  # anything it left in its group (none expected)
    return Result(None if timed_out else p.returncode, out, err, time.monotonic() - t0, timed_out)


def err_lines(r: Result) -> list[str]:
    """stderr's lines, without click's usage boilerplate ('Usage: ...', 'Try ... --help ...') around its
    'Error: ...' line."""
    return [ln for ln in r.err.splitlines() if ln.strip() and not ln.startswith("Usage: ")
            and not (ln.startswith("Try '") and "--help" in ln)]


def tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])
