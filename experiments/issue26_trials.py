#!/usr/bin/env python
"""Issue 26 verification trials, run from outside through the ``geors`` CLI.

Four families, each on small synthetic scenes this script writes (a mosaic of
the NEON OSBS_029 sample when it is present, else a synthetic texture), with
the built-in detector and the weight-free ``--sam box`` engine, ``--tile 256
--overlap 64`` (16 tiles on the 800 px scene), one thread per process:

1. ``resume``: a run is killed (``GEORS_FAULT=batch:3``) or finishes, then
   ``--resume`` with ONE change. Correct = exit 2, a message naming the
   difference, no traceback, the output's rows untouched. Control trials
   (nothing result-affecting changed) must be accepted and end with the rows
   of an uninterrupted run; they are counted separately.
2. ``signals``: SIGINT to the process group (Ctrl-C in a terminal) and SIGTERM
   to the main process, once tiles are in flight, in each execution mode
   (threads default, ``--workers 2``, ``--scheduler local --workers 2``,
   ``--scheduler synchronous``; a ``tcp://`` scheduler is not tried).
   Correct = exit 130 within the time limit, run ``cancelled`` in
   ``geors_runs``, ``PRAGMA integrity_check`` ok and every layer readable
   with pyogrio, no process of the group left, and ``--resume`` ending with
   the rows of an uninterrupted run.
3. ``bad``: bad inputs. Correct = the expected exit code (2 unless stated),
   ONE stderr line naming the file/option, no traceback, no file created
   (a new ``-o`` not there, no other new file in the folder), an existing
   ``-o`` or an input byte-identical (or still valid with its old rows).
4. ``kills``: ``kill -9`` of the main process at a random moment of
   ``geors run``, then ``--resume``. Correct = exit 0 and the rows of an
   uninterrupted run.

Rows are compared as multisets over every layer (``gpkg_contents``) except
``geors_runs``, without ``fid``, ``run_id`` and the ledger's ``seconds`` and
``message``; ``instances.detection_fid`` is replaced by the detection it
points at (scene, tile, geometry), since fids depend on the commit order.

It is a measurement tool, not a test. Usage::

    OMP_NUM_THREADS=1 python experiments/issue26_trials.py [--quick]
        [--families resume,signals,bad,kills] [--json OUT] [--seed N] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

FAMILIES = ("resume", "signals", "bad", "kills")
TILING = ["--tile", "256", "--overlap", "64"]
ONE_THREAD = ["--threads", "1"]
NEON = Path.home() / ".cache/geors/samples/neon/OSBS_029.tif"
WARN = "2 or a warning"
MODES = {"threads": [], "workers2": ["--workers", "2"], "local": ["--scheduler", "local", "--workers", "2"],
         "synchronous": ["--scheduler", "synchronous"]}


# --------------------------------------------------------------------------- running geors


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


def _env(extra: dict | None = None) -> dict:
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
    p = subprocess.Popen(geors_cmd() + [str(a) for a in args], cwd=cwd, env=_env(env), stdout=subprocess.PIPE,
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


# --------------------------------------------------------------------------- reading outputs


def sha256(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_dir():
        return "dir"
    return hashlib.sha256(path.read_bytes()).hexdigest()


_SKIP_COLS = {"fid", "run_id", "seconds", "message"}


def _canon(v):
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, bytes):
        return v.hex()
    return v


def rows(path: Path) -> dict[str, Counter]:
    """Every layer's rows as a multiset (see the module docstring for what is left out)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents ORDER BY table_name")]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "geors_tiles" in tables and "geors_tiles" not in names:
            names.append("geors_tiles")
        det_key = {}
        if "detections" in names:
            cols = [r[1] for r in con.execute('PRAGMA table_info("detections")')]
            if {"fid", "scene", "tile_id", "geom"} <= set(cols):
                for fid, scene, tile, geom in con.execute('SELECT fid, scene, tile_id, geom FROM "detections"'):
                    det_key[fid] = (scene, tile, _canon(geom))
        out = {}
        for name in names:
            if name == "geors_runs":
                continue
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')]
            keep = [c for c in cols if c not in _SKIP_COLS]
            data = Counter()
            for row in con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in keep)} FROM "{name}"'):
                d = dict(zip(keep, row, strict=True))
                if name == "instances" and d.get("detection_fid") is not None:
                    d["detection_fid"] = det_key.get(d["detection_fid"], ("missing", d["detection_fid"]))
                data[tuple(sorted((k, _canon(v)) for k, v in d.items()))] += 1
            out[name] = data
        return out
    finally:
        con.close()


def rows_or_error(path: Path):
    try:
        return rows(path)
    except Exception as exc:  # noqa: BLE001 - a measurement: any failure to read is a finding
        return f"unreadable: {type(exc).__name__}: {exc}"


def diff_rows(a, b) -> str:
    """'' when equal, else a short account per layer."""
    if isinstance(a, str) or isinstance(b, str):
        return f"cannot compare ({a if isinstance(a, str) else b})"
    parts = []
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name, Counter()), b.get(name, Counter())
        if x != y:
            parts.append(f"{name}: {sum(x.values())} rows vs {sum(y.values())} expected "
                         f"({sum((x - y).values())} extra, {sum((y - x).values())} missing)")
    return "; ".join(parts)


def _geometry(blob):
    """A GeoPackage geometry blob as shapely (header: 8 bytes + the envelope its flags declare)."""
    import shapely

    if blob is None:
        return None
    env = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(blob[3] >> 1) & 0b111]
    return shapely.from_wkb(bytes(blob[8 + env:]))


def _raw(path: Path) -> dict[str, list[tuple]]:
    """Per layer: (exact part, floats, geometry) of each row; detection_fid only says whether it points at a
    detection of the same scene and tile (the fids themselves depend on the commit order)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM gpkg_contents")]
        names += ["geors_tiles"] if "geors_tiles" not in names else []
        dets = {}
        if "detections" in names:
            dets = {f: (sc, t) for f, sc, t in con.execute("SELECT fid, scene, tile_id FROM detections")}
        out = {}
        for name in names:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')]
            keep = [c for c in cols if c not in _SKIP_COLS]
            rows_ = []
            for row in con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in keep)} FROM "{name}"'):
                d = dict(zip(keep, row, strict=True))
                if name == "instances" and d.get("detection_fid") is not None:
                    d["detection_fid"] = "ok" if dets.get(d["detection_fid"]) == (d.get("scene"), d.get(
                        "tile_id")) else "dangling"
                geom = d.pop("geom", None)
                floats = tuple(sorted((k, v) for k, v in d.items() if isinstance(v, float)))
                exact = tuple(sorted((k, v) for k, v in d.items() if not isinstance(v, float)))
                rows_.append((exact, floats, geom))
            out[name] = rows_
        return out
    finally:
        con.close()


def close_diff(path: Path, ref: Path, ftol: float = 1e-5, gtol: float = 1e-3) -> tuple[str, float, float]:
    """('' or what differs, largest float difference, largest coordinate difference) between two outputs'
    rows, floats within ``ftol`` and coordinates within ``gtol`` CRS units (float32 noise of other batch
    shapes is ~1e-7 and ~1e-6 m)."""
    import numpy as np
    import shapely

    a, b = _raw(path), _raw(ref)
    parts, fmax, gmax = [], 0.0, 0.0
    for name in sorted(set(a) | set(b)):
        if name == "geors_runs":
            continue
        ga, gb = {}, {}
        for g, rs in ((ga, a.get(name, [])), (gb, b.get(name, []))):
            for exact, floats, geom in rs:
                g.setdefault(exact, []).append((floats, geom))
        bad = 0
        for key in set(ga) | set(gb):
            xs, ys = ga.get(key, []), gb.get(key, [])
            if len(xs) != len(ys):
                bad += abs(len(xs) - len(ys)) or 1
                continue
            xs.sort(key=lambda r: tuple(v for _, v in r[0]))
            ys.sort(key=lambda r: tuple(v for _, v in r[0]))
            for (fx, gx), (fy, gy) in zip(xs, ys, strict=True):
                if [k for k, _ in fx] != [k for k, _ in fy]:
                    bad += 1
                    continue
                df = max((abs(u - v) for (_, u), (_, v) in zip(fx, fy, strict=True)), default=0.0)
                fmax = max(fmax, df)
                dg = 0.0
                if (gx is None) != (gy is None):
                    dg = float("inf")
                elif gx is not None and gx != gy:
                    cx, cy = shapely.get_coordinates(_geometry(gx)), shapely.get_coordinates(_geometry(gy))
                    dg = float(np.abs(cx - cy).max()) if cx.shape == cy.shape else float("inf")
                gmax = max(gmax, dg)
                if df > ftol or dg > gtol:
                    bad += 1
        if bad:
            parts.append(f"{name}: {len(a.get(name, []))} rows vs {len(b.get(name, []))} expected, {bad} differ "
                         f"beyond {ftol:g} / {gtol:g} m")
    return "; ".join(parts), fmax, gmax


def compare_to_reference(path: Path, ref: Path, ref_rows: dict) -> tuple[str, str]:
    """(failure or '', note): identical rows pass; rows within float32 noise pass with a note."""
    exact = diff_rows(rows_or_error(path), ref_rows)
    if not exact:
        return "", ""
    try:
        d, fmax, gmax = close_diff(path, ref)
    except Exception as exc:  # noqa: BLE001
        return f"rows differ from an uninterrupted run ({exact}); unreadable: {exc}", ""
    if d:
        return f"rows differ from an uninterrupted run: {d} (exactly: {exact})", ""
    return "", f"not bitwise identical, within noise (max float diff {fmax:.2g}, max coordinate diff {gmax:.2g})"


def run_statuses(path: Path) -> list[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT status FROM geors_runs ORDER BY fid")]
    finally:
        con.close()


def gpkg_valid(path: Path) -> str:
    """'' when SQLite finds no damage and pyogrio reads every layer, else what failed."""
    if not path.exists():
        return "no file"
    try:
        con = sqlite3.connect(path, timeout=30)  # read-write: a hot journal is rolled back, as SQLite intends
        try:
            check = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
        if check != [("ok",)]:
            return f"integrity_check: {check[:3]}"
        import pyogrio

        for name, _ in pyogrio.list_layers(path):
            pyogrio.read_dataframe(path, layer=name)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return ""


def err_lines(r: Result) -> list[str]:
    """stderr's lines, without click's usage boilerplate ('Usage: ...', 'Try ... --help ...') around its
    'Error: ...' line."""
    return [ln for ln in r.err.splitlines() if ln.strip() and not ln.startswith("Usage: ")
            and not (ln.startswith("Try '") and "--help" in ln)]


def tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


# --------------------------------------------------------------------------- the scenes and files


def write_tif(path: Path, data, nodata=None, res=0.1, tiled=False):
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    prof = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype.name,
                crs=CRS.from_epsg(32617), transform=Affine(res, 0, 404000.0, 0, -res, 3285000.0), interleave="pixel")
    if nodata is not None:
        prof["nodata"] = nodata
    if tiled:
        prof.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    return path


def base_image():
    import numpy as np

    if NEON.exists():
        import rasterio

        with rasterio.open(NEON) as ds:
            a = ds.read()[:3]
        a[a == 255] = 254  # the sample's nodata is 255; keep every pixel valid
        return a
    rng = np.random.default_rng(0)  # a texture with bright discs, when the sample is absent
    a = rng.integers(40, 90, size=(3, 400, 400), dtype=np.uint8)
    yy, xx = np.mgrid[:400, :400]
    for cy, cx in rng.integers(20, 380, size=(40, 2)):
        a[:, (yy - cy) ** 2 + (xx - cx) ** 2 < 150] = 200
    return a


def mosaic(a, n: int):
    import numpy as np

    flips = [a, a[:, :, ::-1], a[:, ::-1, :], a[:, ::-1, ::-1]]
    rows_ = [np.concatenate([flips[(i + j) % 4] for j in range(n)], axis=2) for i in range(n)]
    return np.ascontiguousarray(np.concatenate(rows_, axis=1))


class Assets:
    """Everything the trials read, written once into the work folder."""

    def __init__(self, work: Path, quick: bool):
        import numpy as np

        self.work = work
        a = base_image()
        s800 = mosaic(a, 2)
        write_tif(work / "s800.tif", s800)  # striped, uncompressed: the first 64 KiB are header + top rows
        changed = s800.copy()
        changed[:, 400:, :] = changed[:, 400:, ::-1]  # bottom half mirrored
        (work / "changed").mkdir()
        write_tif(work / "changed/s800.tif", changed)
        one, two = (work / "s800.tif").read_bytes(), (work / "changed/s800.tif").read_bytes()
        assert len(one) == len(two) and one[:65536] == two[:65536] and one != two, "changed raster not as meant"
        (work / "copy").mkdir()
        shutil.copy(work / "s800.tif", work / "copy/s800.tif")
        write_tif(work / "s1200.tif", mosaic(a, 3), tiled=True)  # 36 tiles: signals and kills
        write_tif(work / "other.tif", np.ascontiguousarray(a[:, ::-1, :]))  # a second scene (1 tile)
        write_tif(work / "nodata.tif", np.zeros((3, 512, 512), np.uint8), nodata=0)
        (work / "fake.tif").write_text("not a raster\n")
        (work / "notgpkg.gpkg").write_text("my notes, not a GeoPackage\n")
        (work / "comments.txt").write_text("# the archive\n\n# nothing yet\n")
        (work / "missing_list.txt").write_text("other.tif\ngone.tif\n")
        (work / "bin.toml").write_bytes(bytes(range(256)) * 4)
        self._tomls()
        self._vrt()
        self._models(quick)

    def _tomls(self):
        w = self.work
        bad = {
            "t_overwrite_str.toml": '[output]\noverwrite = "false"\n',
            "t_resume_str.toml": '[output]\nresume = "yes"\n',
            "t_use_gate_str.toml": '[detect]\nuse_gate = "no"\n',
            "t_bands_bool.toml": "[tiling]\nbands = [true, 2, 3]\n",
            "t_threads_bool.toml": "[execution]\nthreads = true\n",
            "t_segmenter_int.toml": "[segment]\nsegmenter = 5\n",
            "t_tile_size_str.toml": '[tiling]\ntile_size = "256"\n',
            "t_simplify_str.toml": '[masks]\nsimplify_px = "lots"\n',
            "t_unknown_key.toml": "[tiling]\ntile_sise = 256\n",
            "t_not_toml.toml": "[tiling\ntile_size = 256\n",
        }
        for name, text in bad.items():
            (w / name).write_text(text)
        (w / "simplify15.toml").write_text("[masks]\nsimplify_px = 1.5\n")

    def _vrt(self):
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">other.tif'
            f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
        (self.work / "huge.vrt").write_text(
            '<VRTDataset rasterXSize="2000000000" rasterYSize="2000000000"><SRS>EPSG:32617</SRS>'
            f"<GeoTransform>400000, 0.1, 0, 3000000, 0, -0.1</GeoTransform>{bands}</VRTDataset>")

    def _models(self, quick: bool):
        import torch
        from safetensors import safe_open
        from safetensors.torch import save_file

        from geors.models.registry import get_model, weights_sha256

        w = self.work
        det = Path(get_model(None))
        self.detector = det
        self.segmenter = Path(get_model("c2fnet-neon-dota"))
        with safe_open(str(det), "pt") as fh:
            header = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(header["geors"])

        def save(name, state_, **changes):
            m = dict(meta, **changes)
            m["weights_sha256"] = weights_sha256(state_)
            save_file(state_, str(w / name), metadata={**header, "geors": json.dumps(m, sort_keys=True)})

        other = dict(state)
        k = next(k for k, v in state.items() if v.dtype.is_floating_point and v.numel() > 100)
        other[k] = state[k] + 1e-3 * torch.randn_like(state[k], generator=torch.Generator().manual_seed(1))
        save("other_detector.safetensors", other)
        save("classes_empty.safetensors", state, classes=[])
        save("tile0.safetensors", state, tile_size=0)
        (w / "trunc.safetensors").write_bytes(self.segmenter.read_bytes()[:100_000])
        self.has_sam = False
        try:
            from geors import sam_weights

            tiny = dict(name="tiny", img_size=256, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                        encoder_global_attn_indexes=[1], window_size=8, prompt_embed_dim=32, decoder_mlp_dim=64,
                        decoder_num_heads=2, iou_head_hidden_dim=32)
            for seed, name in ((0, "tinyA.pth"), (1, "tinyB.pth")):
                torch.manual_seed(seed)
                sam_weights.save_sam_checkpoint(sam_weights.build_sam_from_config(tiny), tiny, w / name)
            torch.save({"geors_sam_config": dict(tiny, img_size=262144), "state_dict": {}}, w / "evil.pth")
            (w / sam_weights.SAM_CHECKPOINTS["vit_b"].filename).write_bytes(b"not the official bytes")
            self.fake_official = sam_weights.SAM_CHECKPOINTS["vit_b"].filename
            self.has_sam = True
        except Exception as exc:  # noqa: BLE001 - segment-anything missing: the SAM trials are left out
            print(f"(SAM trials left out: {exc})", file=sys.stderr)

    def vectors(self, detections_gpkg: Path):
        """Boxes (with a user attribute), closed LineStrings and Points made from a finished run's detections."""
        import pyogrio
        import shapely

        df = pyogrio.read_dataframe(detections_gpkg, layer="detections")
        df = df[["class", "score", "geometry"]].copy()
        df["myid"] = [f"box{i}" for i in range(len(df))]
        pyogrio.write_dataframe(df, self.work / "boxes.gpkg", layer="boxes")
        lines = df.copy()
        lines["geometry"] = shapely.boundary(df.geometry.values)  # closed LineStrings
        pyogrio.write_dataframe(lines, self.work / "lines.gpkg", layer="lines")
        pts = df.copy()
        pts["geometry"] = shapely.centroid(df.geometry.values)
        pyogrio.write_dataframe(pts, self.work / "points.gpkg", layer="points")


# --------------------------------------------------------------------------- the trials


class Trials:
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

    # ---- 1. resume

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

    # ---- 2. signals

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
        p = subprocess.Popen(geors_cmd() + [str(a) for a in args], cwd=self.work, env=_env(env),
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

    # ---- 3. bad inputs

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

    # ---- 4. kills

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
        p = subprocess.Popen(geors_cmd() + [str(a) for a in args], cwd=self.work, env=_env(),
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


# --------------------------------------------------------------------------- report


def report(trials: list[Trial]) -> str:
    out = []
    for fam in FAMILIES:
        ts = [t for t in trials if t.family == fam]
        if not ts:
            continue
        out.append(f"\n== {fam}: {sum(t.ok for t in ts)}/{len(ts)} correct")
        noisy = sum(t.ok and any("not bitwise identical" in n for n in t.notes) for t in ts)
        if noisy:
            out.append(f"   ({noisy} of the correct ones within float32 noise of the reference, not bitwise)")
        groups = Counter(t.group for t in ts)
        w = max(len(g) for g in groups)
        for g in groups:
            gs = [t for t in ts if t.group == g]
            out.append(f"   {g:<{w}}  {sum(t.ok for t in gs):>3} / {len(gs):<3}")
    bad = [t for t in trials if not t.ok]
    out.append(f"\n== failing trials: {len(bad)}")
    for t in bad:
        out.append(f"- [{t.family}/{t.group}] {t.name}\n    $ {t.cmd}\n    -> {t.why}"
                   + (f"\n    notes: {'; '.join(t.notes)}" if t.notes else ""))
    noted = [t for t in trials if t.ok and t.notes and (t.family in ("resume", "bad") or any(
        "bitwise" in n or "orphaned" in n for n in t.notes))]
    if noted:
        out.append("\n== passing trials with notes")
        for t in noted:
            out.append(f"- [{t.family}/{t.group}] {t.name}: {'; '.join(t.notes)}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
