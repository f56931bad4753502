"""Options, the run of the chosen families in the work folder, the printed report and the JSON file."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .assets import Assets
from .bad_inputs import BadInputFamily
from .context import TrialContext
from .kills import KillFamily
from .report import FAMILIES, report
from .resume import ResumeFamily
from .runs import geors_cmd
from .signals import SignalFamily

DESCRIPTION = "Issue 26 verification trials, run from outside through the ``geors`` CLI."


class Trials(ResumeFamily, SignalFamily, BadInputFamily, KillFamily, TrialContext):
    """The four families on one shared context (``family_<name>`` runs one)."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="fewer trials per family (~3 min instead of ~10)")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {FAMILIES}")
    ap.add_argument("--json", type=Path, help="also write every trial as JSON here")
    ap.add_argument("--seed", type=int, default=26, help="seed of the random moments (signals, kills)")
    ap.add_argument("--workdir", type=Path, help="folder for scenes and outputs (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--kills", type=int, default=0, help="number of kill -9 trials (default 8; 2 with --quick)")
    args = ap.parse_args(argv)
    fams = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = set(fams) - set(FAMILIES)
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geors_issue26_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print(f"work folder {work}; geors = {' '.join(geors_cmd())}", flush=True)
    try:
        import torch

        torch.set_num_threads(1)
        assets = Assets(work, args.quick)
        trials = Trials(work, args.quick, args.seed, assets)
        trials.n_kills = args.kills
        for fam in FAMILIES:
            if fam in fams:
                print(f"--- {fam}", flush=True)
                trials.safe(f"family {fam}", getattr(trials, f"family_{fam}"))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - t0
    text = report(trials.trials)
    print(text)
    if trials.harness_errors:
        print("\n== errors of this script (not counted):\n- " + "\n- ".join(trials.harness_errors))
    print(f"\n{len(trials.trials)} trials in {seconds:.0f} s (one thread per process; quick={args.quick})")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "quick": args.quick, "seed": args.seed,
                                         "harness_errors": trials.harness_errors,
                                         "trials": [asdict(t) for t in trials.trials]}, indent=1))
    return 0
