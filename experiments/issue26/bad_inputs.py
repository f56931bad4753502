"""Family 3, ``bad``: bad inputs, and a full disk (RLIMIT_FSIZE). Correct = the expected exit code (2 unless
stated), ONE stderr line naming the file/option, no traceback, no file created (a new ``-o`` not there, no
other new file in the folder), an existing ``-o`` or an input byte-identical (or still valid with its old
rows). A mixin of ``TrialContext``."""

from __future__ import annotations

import shutil
from collections import Counter

from .outputs import diff_rows, gpkg_valid, rows, rows_or_error, sha256
from .runs import ONE_THREAD, TILING, WARN, Trial, err_lines, run_geors, shown, tail


class BadInputFamily:
    def family_bad(self) -> None:
        w = self.work
        run = ["run", "s800.tif", "--sam", "box", *TILING, *ONE_THREAD, "--progress", "none"]
        print("bad: references", flush=True)
        self.reference("run_box", run)
        self.reference("other", ["run", "other.tif", "--sam", "box", *TILING, *ONE_THREAD, "--progress", "none"])
        if not (w / "boxes.gpkg").exists():
            self.reference("detect", ["detect", "s800.tif", *TILING, *ONE_THREAD, "--progress", "none"])
            self.a.vectors(self.refs["detect"])
        a = self.a
        masks = ["masks", "s800.tif", "--boxes", "boxes.gpkg", *TILING, *ONE_THREAD, "--progress", "none"]
        sched = "tcp://127.0.0.1:9"
        # (name, args without -o, -o kind, words, expected exit, quick?)
        #   -o kinds: "new" (a file that must not appear), "has_scene" (a copy of a finished run of s800.tif),
        #   "other" (a copy of a finished run of another scene), ("input", path) (the -o is that input, a copy)
        cases = [
            ("unreachable --scheduler", [*run, "--scheduler", sched], "new", ["--scheduler"], 2, True),
            ("unreachable --scheduler with --overwrite (rows must stay)", [*run, "--scheduler", sched, "--overwrite"],
             "has_scene", ["--scheduler"], 2, True),
            ("a segmenter given as --model", [*run, "--model", str(a.segmenter)], "new",
             [a.segmenter.name, "--model"], 2, True),
            ("model metadata classes: []", [*run, "--model", "classes_empty.safetensors"], "new",
             ["classes_empty.safetensors"], 2, True),
            ("model metadata tile_size 0 (no --tile given)", [x for x in run if x not in TILING] + [
                "--model", "tile0.safetensors"], "new", ["tile0.safetensors"], 2, False),
            ("a VRT of 2e9 x 2e9 px", ["tiles", "huge.vrt", "--progress", "none"], "new", ["huge.vrt"],
             2, True),
            ("--save-config into a missing folder", [*run, "--save-config", "nodir/c.toml"], "new",
             ["nodir", "--save-config"], 2, True),
            ("a binary --config", [*run, "--config", "bin.toml"], "new", ["bin.toml"], 2, True),
            ("a TOML syntax error", [*run, "--config", "t_not_toml.toml"], "new", ["t_not_toml.toml"], 2, False),
            ("TOML overwrite = \"false\" (rows must stay)", [*run, "--config", "t_overwrite_str.toml"], "has_scene",
             ["overwrite"], 2, True),
            ("TOML resume = \"yes\"", [*run, "--config", "t_resume_str.toml"], "has_scene", ["resume"], 2, False),
            ("TOML use_gate = \"no\"", [*run, "--config", "t_use_gate_str.toml"], "new", ["use_gate"], 2, False),
            ("TOML bands = [true, 2, 3]", [*run, "--config", "t_bands_bool.toml"], "new", ["bands"], 2, False),
            ("TOML threads = true", [*run, "--config", "t_threads_bool.toml"], "new", ["threads"], 2, False),
            ("TOML segmenter = 5", [*run, "--config", "t_segmenter_int.toml"], "new", ["segmenter"], 2, False),
            ("TOML tile_size = \"256\"", [*run, "--config", "t_tile_size_str.toml"], "new", ["tile_size"], 2, False),
            ("TOML simplify_px = \"lots\"", [*run, "--config", "t_simplify_str.toml"], "new", ["simplify_px"], 2,
             False),
            ("TOML unknown key tile_sise", [*run, "--config", "t_unknown_key.toml"], "new", ["tile_sise"], 2, False),
            ("a list file of comments only", ["tiles", "@comments.txt", "--progress", "none"], "new",
             ["comments.txt"], 2, True),
            ("a missing scene (named once)", ["run", "missing.tif", "--sam", "box", "--progress", "none"], "new",
             ["missing.tif"], 2, False),
            ("a text file as scene, --strict", [*[("fake.tif" if x == "s800.tif" else x) for x in run], "--strict"],
             "new", ["fake.tif"], 2, False),
            ("--bands 4 on a 3-band scene", [*run, "--bands", "4"], "new", ["--bands", "band index 4"], 2, False),
            ("--overlap = --tile", [*[x for x in run], "--overlap", "256"], "new", ["--overlap"], 2, False),
            ("--model a missing file", [*run, "--model", "nosuch.safetensors"], "new", ["nosuch.safetensors"], 2,
             False),
            ("--crs EPSG:999999", [*run, "--crs", "EPSG:999999"], "new", ["--crs"], 2, False),
            ("--workers 0", [*run, "--workers", "0"], "new", ["--workers"], 2, False),
            ("-o a text file named .gpkg", run, ("input", "notgpkg.gpkg"), ["notgpkg.gpkg"], 2, False),
            ("-o a text file named .gpkg, --resume", [*run, "--resume"], ("input", "notgpkg.gpkg"),
             ["notgpkg.gpkg"], 2, False),
            ("a segmenter file given as --model into an existing GeoPackage", [*run, "--model", str(a.segmenter)],
             "other", [a.segmenter.name, "--model"], 2, False),
            ("unreachable --scheduler into an existing GeoPackage", [*run, "--scheduler", sched], "other",
             ["--scheduler"], 2, False),
            ("a detector file given as --segmenter", ["segment", "s800.tif", "--segmenter", str(a.detector),
                                                      *TILING, *ONE_THREAD, "--progress", "none"], "new",
             [a.detector.name, "--segmenter"], 2, False),
            # inputs never outputs
            ("train detector -o its --scene", ["train", "detector", "--scene", "in_scene.tif", "--labels", "boxes.gpkg",
                                                "--max-minutes", "0.2"], ("input", "in_scene.tif"), ["in_scene.tif"], 2,
             True),
            ("train detector -o its --labels", ["train", "detector", "--scene", "s800.tif", "--labels", "in_boxes.gpkg",
                                                 "--max-minutes", "0.2"], ("input", "in_boxes.gpkg"),
             ["in_boxes.gpkg"], 2, False),
            ("label -o its scene", ["label", "in_scene.tif", "--boxes", "boxes.gpkg", "--sam", "box"],
             ("input", "in_scene.tif"), ["in_scene.tif"], 2, True),
            ("label --instances X -o X", ["label", "s800.tif", "--boxes", "boxes.gpkg", "--sam", "box", "--instances",
                                          "lab_x.tif"], ("new_named", "lab_x.tif"), ["lab_x.tif"], 2, True),
            ("label -o its --boxes", ["label", "s800.tif", "--boxes", "in_boxes.gpkg", "--sam", "box"],
             ("input", "in_boxes.gpkg"), ["in_boxes.gpkg"], 2, False),
            ("detect -o its scene", ["detect", "in_scene.tif", *TILING, *ONE_THREAD, "--progress", "none"],
             ("input", "in_scene.tif"), ["in_scene.tif"], 2, True),
            ("masks -o its --boxes GeoPackage", ["masks", "s800.tif", "--boxes", "in_boxes.gpkg", "--sam", "box",
                                                  *TILING, *ONE_THREAD, "--progress", "none"],
             ("input", "in_boxes.gpkg"), ["in_boxes.gpkg"], 2, False),
            ("eval detections -o its TRUTH", ["eval", "detections", "in_pred.gpkg", "in_boxes.gpkg"],
             ("input", "in_boxes.gpkg"), ["in_boxes.gpkg"], 2, False),
            ("preview -o its GPKG", ["preview", "s800.tif", "in_pred.gpkg"], ("input", "in_pred.gpkg"),
             ["in_pred.gpkg"], 2, False),
            # geometry and content
            ("Points as truth", ["eval", "detections", "in_pred.gpkg", "points.gpkg"], "none", ["points.gpkg"], WARN,
             True),
            ("closed LineStrings as --boxes", [("lines.gpkg" if x == "boxes.gpkg" else x) for x in masks]
             + ["--sam", "box"], "new", ["lines.gpkg"], WARN, True),
            ("--save-config over the scene", [*[("in_scene.tif" if x == "s800.tif" else x) for x in run],
                                              "--save-config", "in_scene.tif"], "new", ["in_scene.tif"], 2, False),
            ("segment --raster-out over the scene", ["segment", "in_scene.tif", "--raster-out", "in_scene.tif",
                                                     *TILING, *ONE_THREAD, "--progress", "none"], "new",
             ["in_scene.tif"], 2, False),
            ("label --masks-out over its --boxes", ["label", "s800.tif", "--boxes", "in_boxes.gpkg", "--sam", "box",
                                                    "--masks-out", "in_boxes.gpkg"], "new", ["in_boxes.gpkg"], 2,
             False),
            ("--config a folder", [*run, "--config", "copy"], "new", ["copy"], 2, False),
            ("a list file naming a missing scene, --strict", ["tiles", "@missing_list.txt", "--strict",
                                                               "--progress", "none"], "new", ["gone.tif"], 2, False),
            ("an all-nodata scene (exit 0 with a hint)", ["run", "nodata.tif", "--sam", "box", *TILING, *ONE_THREAD,
                                                          "--progress", "none"], "hint", ["nodata"], 0, True),
            ("-o an existing GeoPackage, a model with classes: []", [*run, "--model", "classes_empty.safetensors"],
             "other", ["classes_empty.safetensors"], 2, False),
        ]
        if a.has_sam:
            cases += [
                ("a truncated safetensors as --sam", [*masks, "--sam", "trunc.safetensors"], "new",
                 ["trunc.safetensors"], 2, True),
                ("a crafted SAM config (img_size 262144)", [*masks, "--sam", "evil.pth"], "new", ["evil.pth"], 2,
                 False),
                ("a file posing as the official SAM checkpoint", [*masks, "--sam", a.fake_official], "new",
                 [a.fake_official], 2, False),
            ]
        if self.quick:
            cases = [c for c in cases if c[5]]
        print(f"bad: {len(cases)} cases", flush=True)
        for name, args, okind, words, expect, _ in cases:
            self.safe(name, self._bad_case, name, args, okind, words, expect)
        full = [("disk full while a new output is created (64 KiB)", 64 * 1024, None)]
        if not self.quick:
            full += [("disk full after creation (150 KiB)", 150 * 1024, None),
                     ("disk full while adding to an existing GeoPackage", 12 * 1024, "other")]
        for name, limit, base in full:
            self.safe(name, self._disk_full_case, name, run, limit, base)

    def _disk_full_case(self, name, run, limit, base) -> None:
        """Correct: exit 1 or 2, one 'Error' line, no traceback; the name holds nothing or a valid GeoPackage
        (an existing one with every old row); no other file left."""
        w = self.work
        out = self.fresh("full")
        before = None
        if base:
            shutil.copy(self.refs[base], out)
            before = rows(out)
            limit += out.stat().st_size
        listing = {p.relative_to(w) for p in w.rglob("*")}
        full = [*run, "-o", out.name]
        r = run_geors(full, w, 120, fsize=limit)
        why = []
        if r.timed_out or r.rc not in (1, 2):
            why.append("timed out" if r.timed_out else f"exit {r.rc} (expected 1 or 2)")
        if "Traceback" in r.err:
            why.append("traceback")
        errors = [ln for ln in err_lines(r) if ln.startswith("Error")]
        if len(errors) != 1:
            why.append(f"{len(errors)} 'Error' lines")
        if out.exists():
            v = gpkg_valid(out)
            if v:
                why.append(f"{out.name} is not a valid GeoPackage: {v}")
            elif before is not None:
                after = rows(out)
                lost = {k: sum((before[k] - after.get(k, Counter())).values()) for k in before}
                if any(lost.values()):
                    why.append(f"old rows lost: {lost}")
        new = sorted(str(p) for p in ({p.relative_to(w) for p in w.rglob("*")} - listing) if p != out.relative_to(w))
        if new:
            why.append(f"left behind: {new}")
            for p in new:
                if (w / p).is_file():
                    (w / p).unlink()
        if why:
            why.append(f"stderr: {tail(r.err, 4)}")
        self.add(Trial("bad", "disk full", name, f"(RLIMIT_FSIZE {limit} B) " + shown(full), not why, "; ".join(why),
                       r.seconds))

    def _bad_case(self, name, args, okind, words, expect) -> None:
        w = self.work
        warn_ok = expect == WARN  # refused (exit 2), or done with a warning naming the file (exit 0)
        expect = 2 if warn_ok else expect
        for f, src in (("in_scene.tif", "s800.tif"), ("in_boxes.gpkg", "boxes.gpkg"),
                       ("in_pred.gpkg", self.refs["run_box"].name), ("notgpkg.gpkg", None)):
            if src is not None:
                shutil.copy(w / src, w / f)
        (w / "notgpkg.gpkg").write_text("my notes, not a GeoPackage\n")
        out_args: list = []
        out = None
        if okind in ("new", "hint"):
            out = self.fresh("bad")
        elif okind == "has_scene":
            out = self.fresh("bad_has_scene")
            shutil.copy(self.refs["run_box"], out)
        elif okind == "other":
            out = self.fresh("bad_other")
            shutil.copy(self.refs["other"], out)
        elif isinstance(okind, tuple):
            out = w / okind[1]
            if okind[0] == "new_named" and out.exists():
                out.unlink()
        if out is not None:
            out_args = ["-o", out.name]
        full = [*args, *out_args]
        existed = out is not None and out.exists()
        before_hash = sha256(out) if existed else None
        before_rows = rows_or_error(out) if existed and out.suffix == ".gpkg" and okind != ("input", "notgpkg.gpkg") \
            else None
        listing = {p.relative_to(w) for p in w.rglob("*")}
        inputs = {f: sha256(w / f) for f in ("in_scene.tif", "in_boxes.gpkg", "in_pred.gpkg", "s800.tif")
                  if f in full and (out is None or f != out.name)}
        r = run_geors(full, w, 120)
        why, notes = [], []
        changed_inputs = [f for f, h in inputs.items() if sha256(w / f) != h]
        if changed_inputs:
            why.append(f"input(s) changed: {changed_inputs}")
        lines = err_lines(r)
        if warn_ok and r.rc == 0 and "Traceback" not in r.err and any(x.lower() in r.err.lower() for x in words):
            said = next(ln for ln in lines if any(x.lower() in ln.lower() for x in words))
            self.add(Trial("bad", "refuse or warn", name, shown(full), True, "", r.seconds,
                           [f"warned, exit 0: {said.strip()[:300]}"]))
            return
        if r.timed_out:
            why.append("timed out after 120 s")
        elif r.rc != expect:
            why.append(f"exit {r.rc} (expected {expect})")
        if "Traceback" in r.err:
            why.append("traceback on stderr")
        text = (r.err + r.out).lower() if okind == "hint" else r.err.lower()
        if not any(x.lower() in text for x in words):
            why.append(f"message names none of {words}")
        if expect != 0 and len(lines) != 1:
            why.append(f"{len(lines)} stderr lines (expected one message)")
        if name.startswith("a missing scene") and r.err.count("missing.tif") > 1:
            why.append("the file is named more than once")
        if out is not None and okind != "hint" and expect != 0:
            if not existed and out.exists():
                why.append(f"{out.name} was created")
            elif existed:
                if sha256(out) != before_hash:
                    if before_rows is None:
                        why.append(f"{out.name} was changed")
                    else:
                        v = gpkg_valid(out)
                        d = diff_rows(rows_or_error(out), before_rows)
                        if v or d:
                            why.append(f"{out.name} changed: {v or d}")
                        else:
                            notes.append("existing GeoPackage's bytes changed, still valid with its rows")
        new = sorted(str(p) for p in ({p.relative_to(w) for p in w.rglob("*")} - listing)
                     if out is None or p != out.relative_to(w))
        if new and expect != 0:
            why.append(f"left behind: {new}")
        for p in new:  # keep the folder as it was for the next case
            q = w / p
            if q.is_file() and okind != "hint":
                q.unlink()
        if why:
            why.append(f"stderr: {tail(r.err, 4)}")
        group = "exit 0 + hint" if expect == 0 else "refuse or warn" if warn_ok else "refuse"
        self.add(Trial("bad", group, name, shown(full), not why,
                       "; ".join(why), r.seconds, notes))
