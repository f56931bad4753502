"""Family 4, ``kills``: ``kill -9`` of the main process at a random moment of ``geors run`` (every fourth
one during ``--overwrite`` of a finished output), then ``--resume``. Correct = exit 0 and the rows of an
uninterrupted run. A mixin of ``TrialContext``."""

from __future__ import annotations

import shutil
import subprocess
import time

from .outputs import compare_to_reference, gpkg_valid
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


class KillFamily:
    def family_kills(self) -> None:
        run = ["run", "s1200.tif", "--sam", "box", *TILING, *ONE_THREAD, "--progress", "none"]
        print("kills: reference", flush=True)
        self.reference("run_1200", run)
        n = self.n_kills or (2 if self.quick else 8)
        modes = ["threads", "workers2", "local"]
        for i in range(n):  # every fourth one kills an --overwrite of a finished output
            self.safe(f"kill {i}", self._kill_trial, run, modes[i % len(modes)], i % 4 == 3)

    def _kill_trial(self, run: list, mode: str, overwrite: bool = False) -> None:
        out = self.fresh(f"kill_{mode}")
        if overwrite:  # kill -9 while --overwrite replaces a finished output's rows; --resume must finish them
            shutil.copy(self.refs["run_1200"], out)
            mode_name = f"{mode} --overwrite"
        else:
            mode_name = mode
        args = [*run, *MODES[mode], *(["--overwrite"] if overwrite else []), "-o", out.name]
        span = 0.9 * self.ref_seconds["run_1200"] + (4.0 if mode == "local" else 0.0)  # a LocalCluster starts
        delay = self.rng.uniform(1.0, span)
        t0 = time.monotonic()
        p = subprocess.Popen(geors_cmd() + [str(a) for a in args], cwd=self.work, env=geors_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            p.wait(delay)
            killed = False
        except subprocess.TimeoutExpired:
            p.kill()  # SIGKILL to the main process only
            p.wait()
            killed = True
        time.sleep(0.5)
        left = group_members(p.pid)
        kill_group(p.pid)  # workers a killed main process left (LocalCluster)
        notes = [f"kill -9 after {delay:.1f} s" if killed else f"finished before the kill at {delay:.1f} s",
                 f"output existed: {out.exists()}"]
        if left:
            notes.append(f"{len(left)} orphaned process(es) of the group killed")
        res = [*[a for a in args[:-2] if a != "--overwrite"], "--resume", "-o", out.name]
        r = run_geors(res, self.work, 240)
        why = []
        if r.rc != 0:
            why.append(f"--resume exit {r.rc}: {tail(r.err, 4)}")
        else:
            v = gpkg_valid(out)
            d, note = ("", "") if v else compare_to_reference(out, self.refs["run_1200"], self.ref_rows["run_1200"])
            why += [v or d] if v or d else []
            notes += [note] if note else []
        self.add(Trial("kills", mode_name if killed else f"{mode_name} (not killed)",
                       f"kill -9 at {delay:.1f} s, {mode_name}",
                       shown(args) + f"  (kill -9 at {delay:.1f} s) ; " + shown(res), not why, "; ".join(why),
                       time.monotonic() - t0, notes))
