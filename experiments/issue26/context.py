"""What every family of trials shares: the work folder, the random moments, the trials recorded so far, the
uninterrupted reference runs and the killed partial bases."""

from __future__ import annotations

import random
import signal
from pathlib import Path

from .assets import Assets
from .outputs import rows
from .runs import Trial, run_geors, shown


class TrialContext:
    def __init__(self, work: Path, quick: bool, seed: int, assets: Assets):
        self.work, self.quick, self.a = work, quick, assets
        self.rng = random.Random(seed)
        self.trials: list[Trial] = []
        self.harness_errors: list[str] = []
        self.n_kills = 0
        self.refs: dict[str, Path] = {}
        self.ref_rows: dict[str, dict] = {}
        self.ref_seconds: dict[str, float] = {}
        self._n = 0

    def fresh(self, stem: str, ext: str = ".gpkg") -> Path:
        self._n += 1
        return self.work / f"{stem}_{self._n:03d}{ext}"

    def add(self, t: Trial) -> None:
        self.trials.append(t)
        mark = "ok  " if t.ok else "FAIL"
        print(f"  [{mark}] {t.family}/{t.group}: {t.name} ({t.seconds:.0f} s){'' if t.ok else ' -- ' + t.why}",
              flush=True)

    def safe(self, name, fn, *args) -> None:
        """One trial; an error of this script is listed as such, not counted as the product's."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001
            self.harness_errors.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"  [HARNESS ERROR] {name}: {type(exc).__name__}: {exc}", flush=True)

    # ---- references and bases

    def reference(self, key: str, args: list, timeout: float = 180) -> Path:
        """An uninterrupted run; its rows are what every resumed trial of that command must end with."""
        if key in self.refs:
            return self.refs[key]
        out = self.fresh(f"ref_{key}")
        r = run_geors([*args, "-o", out.name], self.work, timeout)
        if r.rc != 0:
            raise SystemExit(f"reference run {key} failed (rc {r.rc}): {shown([*args, '-o', out.name])}\n{r.err}")
        self.refs[key], self.ref_rows[key], self.ref_seconds[key] = out, rows(out), r.seconds
        return out

    def partial(self, key: str, args: list, nth: int = 3) -> Path:
        """The same run killed (SIGKILL) between batches: GEORS_FAULT=batch:nth."""
        out = self.fresh(f"part_{key}")
        r = run_geors([*args, "-o", out.name], self.work, 180, env={"GEORS_FAULT": f"batch:{nth}"})
        if r.rc != -signal.SIGKILL or not out.exists():
            raise SystemExit(f"partial base {key}: expected a SIGKILL mid-run, got rc {r.rc}\n{r.err}")
        return out
