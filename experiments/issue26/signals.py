"""Family 2, ``signals``: SIGINT to the process group (Ctrl-C in a terminal) and SIGTERM to the main process,
once tiles are in flight, in each execution mode (threads default, ``--workers 2``, ``--scheduler local
--workers 2``, ``--scheduler synchronous``; a ``tcp://`` scheduler is not tried). Correct = exit 130 within
the time limit, run ``cancelled`` in ``geors_runs``, ``PRAGMA integrity_check`` ok and every layer readable
with pyogrio, no process of the group left, and ``--resume`` ending with the rows of an uninterrupted run.
A mixin of ``TrialContext``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

from .outputs import compare_to_reference, gpkg_valid, run_statuses
from .runs import (
    MODES,
    ONE_THREAD,
    TILING,
    Trial,
    geors_cmd,
    geors_env,
    group_members,
    kill_group,
    run_geors,
    shown,
    tail,
)


class SignalFamily:
    def family_signals(self) -> None:
        run = ["run", "s1200.tif", "--sam", "box", *TILING, *ONE_THREAD]
        print("signals: reference", flush=True)
        self.reference("run_1200", [*run, "--progress", "none"])
        plans = []
        for mode in MODES:
            for how in ("SIGINT group", "SIGTERM main"):
                plans.append((mode, how))
        # Ctrl-C while the LocalCluster starts (measured: the window where it was lost is about 1 s wide)
        plans += [("local", f"SIGINT group, {d:g} s after start") for d in (2, 2.5, 3, 3.5)]
        plans += [("threads", "SIGTERM main, during --overwrite")]
        if self.quick:
            plans = [("threads", "SIGINT group"), ("workers2", "SIGTERM main"), ("local", "SIGINT group")]
        for mode, how in plans:
            self.safe(f"{how} {mode}", self._signal_trial, run, mode, how)

    def _start(self, args: list, env=None) -> tuple[subprocess.Popen, list[dict], threading.Event]:
        p = subprocess.Popen(geors_cmd() + [str(a) for a in args], cwd=self.work, env=geors_env(env),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        events: list[dict] = []
        in_flight = threading.Event()

        def read():
            for line in p.stdout:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                events.append(ev)
                if ev.get("event") == "progress" and 0 < ev.get("done", 0) < ev.get("total", 0):
                    in_flight.set()

        errs: list[str] = []

        def drain():
            errs.append(p.stderr.read())

        threading.Thread(target=read, daemon=True).start()
        self._err_thread = threading.Thread(target=drain, daemon=True)
        self._err_thread.start()
        self._errs = errs
        return p, events, in_flight

    def _stderr(self) -> str:
        self._err_thread.join(10)
        return "".join(self._errs)

    def _signal_trial(self, run: list, mode: str, how: str) -> None:
        out = self.fresh(f"sig_{mode}")
        overwrite = "--overwrite" in how
        if overwrite:  # a finished output of the same scene: its rows are replaced
            shutil.copy(self.refs["run_1200"], out)
        args = [*run, *MODES[mode], "--progress", "jsonl", *(["--overwrite"] if overwrite else []), "-o", out.name]
        t0 = time.monotonic()
        p, events, in_flight = self._start(args)
        why, notes = [], []
        if "after start" in how:
            time.sleep(float(how.split(", ")[1].split()[0]))
        elif not in_flight.wait(120):
            why.append("no tile finished within 120 s")
        time.sleep(self.rng.uniform(0.0, 0.5))
        if p.poll() is not None:
            why.append(f"finished (exit {p.returncode}) before the signal: not a trial")
        elif how.startswith("SIGINT group"):
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(90)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
            why.append("hang: still running 90 s after the signal")
        if rc is not None:
            time.sleep(1.0)
            left = group_members(p.pid)
            if left:
                why.append(f"{len(left)} process(es) of the group still alive 1 s after the main one exited")
        kill_group(p.pid)
        p.wait()
        err = self._stderr()
        if rc is not None and rc != 130:
            why.append(f"exit {rc} (expected 130)")
        if "Traceback" in err:
            why.append("traceback")
        if out.exists():
            try:
                st = run_statuses(out)
                if not st or st[-1] != "cancelled":
                    why.append(f"run recorded {st[-1] if st else 'nothing'} (expected cancelled)")
            except Exception as exc:  # noqa: BLE001
                why.append(f"geors_runs unreadable: {exc}")
            v = gpkg_valid(out)
            if v:
                why.append(f"GeoPackage damaged: {v}")
            done = max((e.get("done", 0) for e in events if e.get("event") == "progress"), default=0)
            notes.append(f"tiles reported done before exit: {done}")
            res = [*run, *MODES[mode], "--progress", "none", "--resume", "-o", out.name]
            r = run_geors(res, self.work, 240)
            if r.rc != 0:
                why.append(f"--resume exit {r.rc}: {tail(r.err, 3)}")
            else:
                d, note = compare_to_reference(out, self.refs["run_1200"], self.ref_rows["run_1200"])
                why += [f"after --resume, {d}"] if d else []
                notes += [note] if note else []
        else:
            notes.append("no output file when the signal came")
        if why:
            why.append(f"stderr: {tail(err, 4)}")
        self.add(Trial("signals", f"{mode} / {how}", f"{how} in mode {mode}", shown(args), not why, "; ".join(why),
                       time.monotonic() - t0, notes))
