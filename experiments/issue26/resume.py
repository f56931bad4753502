"""Family 1, ``resume``: a run is killed (``GEORS_FAULT=batch:3``) or finishes, then ``--resume`` with ONE
change. Correct = exit 2, a message naming the difference, no traceback, the output's rows untouched. Control
trials (nothing result-affecting changed) must be accepted and end with the rows of an uninterrupted run;
they are counted separately. A mixin of ``TrialContext``."""

from __future__ import annotations

import shutil
from pathlib import Path

from .outputs import compare_to_reference, diff_rows, rows_or_error, sha256
from .runs import ONE_THREAD, TILING, Trial, run_geors, shown, tail


class ResumeFamily:
    def family_resume(self) -> None:
        print("resume: bases", flush=True)
        q = self.quick
        run_box = ["run", "s800.tif", "--sam", "box", *TILING, *ONE_THREAD, "--progress", "none"]
        detect = ["detect", "s800.tif", *TILING, *ONE_THREAD, "--progress", "none"]
        tiles = ["tiles", "s800.tif", *TILING, "--progress", "none"]  # tiles runs no model: no --threads
        masks = ["masks", "s800.tif", "--boxes", "boxes.gpkg", "--sam", "box", *TILING, *ONE_THREAD,
                 "--progress", "none"]
        self.reference("run_box", run_box)
        self.reference("detect", detect)
        bases = {"run_box": self.partial("run_box", run_box), "detect": self.partial("detect", detect),
                 "run_box_finished": self.refs["run_box"]}
        cmds = {"run_box": run_box, "detect": detect, "run_box_finished": run_box}
        if not (self.work / "boxes.gpkg").exists():
            self.a.vectors(self.refs["detect"])
        if not q:
            self.reference("tiles", tiles)
            self.reference("masks", masks)
            bases["tiles"], cmds["tiles"] = self.partial("tiles", tiles), tiles
            bases["tiles_nostats"] = self.partial("tiles_nostats", [*tiles, "--no-stats"])
            cmds["tiles_nostats"] = [*tiles, "--no-stats"]
            bases["masks"], cmds["masks"] = self.partial("masks", masks), masks
            if self.a.has_sam:
                tiny = ["run", "s800.tif", "--sam", "tinyA.pth", *TILING, *ONE_THREAD, "--progress", "none"]
                self.reference("run_tinyA", tiny)
                bases["run_tinyA"], cmds["run_tinyA"] = self.partial("run_tinyA", tiny), tiny

        def swap(args, old, new):
            return [new if a == old else a for a in args]

        def replace_opt(args, opt, value):
            out = list(args)
            i = out.index(opt)
            out[i + 1] = value
            return out

        # (name, base, resume command, words of which one must be in the message)
        changes = [
            ("detect -> run --sam box", "detect", run_box, ["command", "layers", "instances"]),
            ("run --sam box -> detect", "run_box", detect, ["command", "layers", "instances"]),
            ("--simplify 2", "run_box", [*run_box, "--simplify", "2"], ["--simplify"]),
            ("another raster: same name, size, first 64 KiB", "run_box", swap(run_box, "s800.tif", "changed/s800.tif"),
             ["s800.tif"]),
            ("--tile 320", "run_box", replace_opt(run_box, "--tile", "320"), ["--tile"]),
            ("--gate-threshold 0.5", "run_box", [*run_box, "--gate-threshold", "0.5"], ["--gate-threshold"]),
            ("--score-threshold 0.5", "run_box", [*run_box, "--score-threshold", "0.5"], ["--score-threshold"]),
            ("--model another file", "run_box", [*run_box, "--model", "other_detector.safetensors"], ["--model"]),
        ]
        controls = [("unchanged", "run_box", run_box, "run_box")]
        if not q:
            changes += [
                ("--sam watershed (another engine)", "run_box", swap(run_box, "box", "watershed"), ["--sam"]),
                ("--sam grabcut (another engine)", "run_box", swap(run_box, "box", "grabcut"), ["--sam"]),
                ("--overlap 96", "run_box", replace_opt(run_box, "--overlap", "96"), ["--overlap"]),
                ("--no-gate", "run_box", [*run_box, "--no-gate"], ["--no-gate", "--gate-threshold"]),
                ("--min-score 0.05", "run_box", [*run_box, "--min-score", "0.05"], ["--min-score", "min_score"]),
                ("--bands 3,2,1", "run_box", [*run_box, "--bands", "3,2,1"], ["--bands"]),
                ("--segmenter c2fnet-neon-dota", "run_box", [*run_box, "--segmenter", "c2fnet-neon-dota"],
                 ["--segmenter"]),
                ("--config with simplify_px 1.5", "run_box", [*run_box, "--config", "simplify15.toml"],
                 ["--simplify"]),
                ("finished run, then --simplify 2", "run_box_finished", [*run_box, "--simplify", "2"], ["--simplify"]),
                ("finished run, then detect", "run_box_finished", detect, ["command", "layers", "instances"]),
                ("detect, then --score-threshold 0.5", "detect", [*detect, "--score-threshold", "0.5"],
                 ["--score-threshold"]),
                ("tiles -> tiles --no-stats", "tiles", [*tiles, "--no-stats"], ["--no-stats"]),
                ("tiles --no-stats -> tiles", "tiles_nostats", tiles, ["--no-stats"]),
                ("masks -> masks --all-parts", "masks", [*masks, "--all-parts"], ["--all-parts"]),
                ("masks -> masks --class-field myid", "masks", [*masks, "--class-field", "myid"], ["--class-field"]),
                ("masks -> masks --simplify 0", "masks", [*masks, "--simplify", "0"], ["--simplify"]),
            ]
            if self.a.has_sam:
                changes.append(("--sam another checkpoint, same architecture", "run_tinyA",
                                swap(cmds["run_tinyA"], "tinyA.pth", "tinyB.pth"), ["--sam"]))
            controls += [
                ("--workers 2 --batch-size 1 (execution only)", "run_box", [*run_box, "--workers", "2",
                                                                           "--batch-size", "1"], "run_box"),
                ("an identical copy of the scene elsewhere", "run_box", swap(run_box, "s800.tif", "copy/s800.tif"),
                 "run_box"),
                ("finished run, unchanged", "run_box_finished", run_box, "run_box"),
                ("detect unchanged", "detect", detect, "detect"),
                ("tiles unchanged", "tiles", tiles, "tiles"),
                ("masks unchanged", "masks", masks, "masks"),
                ("same options through --config", "run_box", [*run_box, "--config", "same.toml"], "run_box"),
            ]
            (self.work / "same.toml").write_text("[masks]\nsimplify_px = 0.5\n")
            if self.a.has_sam:
                controls.append(("SAM checkpoint unchanged", "run_tinyA", cmds["run_tinyA"], "run_tinyA"))
        print(f"resume: {len(changes)} changes, {len(controls)} controls", flush=True)
        for name, base, args, words in changes:
            self.safe(name, self._resume_refused, name, bases[base], args, words)
        if not q:
            self.safe("masks --boxes edited in place", self._resume_boxes_changed, masks)
        for name, base, args, ref in controls:
            self.safe(name, self._resume_accepted, name, bases[base], args, ref)

    def _resume_refused(self, name, base: Path, args, words) -> None:
        out = self.fresh("resume")
        shutil.copy(base, out)
        before_hash, before = sha256(out), rows_or_error(out)
        full = [*args, "--resume", "-o", out.name]
        r = run_geors(full, self.work, 180)
        why, notes = [], []
        if r.timed_out:
            why.append("timed out")
        elif r.rc != 2:
            why.append(f"exit {r.rc} (accepted)" if r.rc == 0 else f"exit {r.rc}")
        msg = r.err.lower()
        if "Traceback" in r.err:
            why.append("traceback")
        if r.rc == 2 and not any(w.lower() in msg for w in words):
            why.append(f"message does not name {' or '.join(words)}")
        d = diff_rows(rows_or_error(out), before)
        if d:
            why.append(f"output rows changed: {d}")
        elif sha256(out) != before_hash:
            notes.append("bytes changed, rows the same")
        if why:
            why.append(f"stderr: {tail(r.err, 3)}")
        self.add(Trial("resume", "refuse", name, shown(full), not why, "; ".join(why), r.seconds, notes))

    def _resume_accepted(self, name, base: Path, args, ref: str) -> None:
        out = self.fresh("resume")
        shutil.copy(base, out)
        full = [*args, "--resume", "-o", out.name]
        r = run_geors(full, self.work, 180)
        why, notes = [], []
        if r.rc != 0:
            why.append(f"exit {r.rc}: {tail(r.err, 3)}")
        else:
            d, note = compare_to_reference(out, self.refs[ref], self.ref_rows[ref])
            why += [d] if d else []
            notes += [note] if note else []
        self.add(Trial("resume", "control", name, shown(full), not why, "; ".join(why), r.seconds, notes))

    def _resume_boxes_changed(self, masks) -> None:
        """The --boxes file changed in place between the killed run and --resume (same path)."""
        d = self.work / "bx"
        d.mkdir(exist_ok=True)
        shutil.copy(self.work / "boxes.gpkg", d / "boxes.gpkg")
        args = [("bx/boxes.gpkg" if a == "boxes.gpkg" else a) for a in masks]
        base = self.partial("masks_bx", args)
        import pyogrio

        df = pyogrio.read_dataframe(d / "boxes.gpkg")
        df.loc[df.index[0], "myid"] = "edited"
        (d / "boxes.gpkg").unlink()
        pyogrio.write_dataframe(df, d / "boxes.gpkg", layer="boxes")
        self._resume_refused("masks --boxes edited in place", base, args, ["--boxes"])
