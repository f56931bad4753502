"""Crash tests: the real CLI killed at chosen moments, then resumed, compared with a clean run.

Each case runs ``geors run`` in a subprocess on a small multi-tile scene with a
kill point set (:mod:`geors.faults`: ``GEORS_FAULT=point[:N]``,
``GEORS_FAULT_SIGNAL``), checks the file left behind (a copy, so SQLite's own
recovery in the check does not stand in for geors'), runs the same command with
``--resume`` and compares the result feature by feature with a clean run:
geometry WKB, class, score, the instance -> detection links, the ledger.

The default suite runs one chain (SIGTERM between batches, SIGKILL inside a
commit of the resumed run, resume); every point and signal, and kills at random
moments, are ``slow``
(``pytest -m slow tests/test_crash.py -s`` runs them and prints the counts).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

import scenes

CLI = [sys.executable, "-c", "from geors.cli.main import main; main()"]
MODEL: Path | None = None  # the random-weight model file of _random_model
TILES = 3  # 704 x 256 px scene, 256 px tiles, 32 px overlap -> 3 tiles, one per batch



@pytest.fixture(scope="module", autouse=True)
def _random_model(tmp_path_factory):
    """A random-weight model file: what is checked here is the plumbing, which must not depend on what the
    shipped weights happen to detect on synthetic squares (a retrained default model found none)."""
    import torch

    from geors.models.r2cnn import R2CNN, R2CNNConfig
    from geors.models.registry import save_model

    global MODEL
    torch.manual_seed(0)
    MODEL = tmp_path_factory.mktemp("model") / "random.safetensors"
    save_model(R2CNN(R2CNNConfig(num_classes=1, anchor_scales=[16.0, 32.0])),
               {"classes": ["blob"], "bands": 3, "tile_size": 256, "overlap": 32, "gate_threshold": 0.0}, MODEL)


def _scene(path: Path) -> Path:
    rng = np.random.default_rng(7)
    data = rng.integers(40, 90, size=(3, 256, 704), dtype=np.uint8)
    for x, y in ((40, 60), (300, 150), (520, 40), (610, 200)):
        data[:, y:y + 24, x:x + 24] = 250
        data[1, y + 6:y + 18, x + 6:x + 18] = 120
    return scenes.write(path, data, CRS.from_epsg(32617), Affine(0.5, 0, 404000.0, 0, -0.5, 3285000.0))


def _command(scene: Path, out: Path, *extra: str) -> list[str]:
    return [*CLI, "run", str(scene), "-o", str(out), "--model", str(MODEL), "--no-gate", "--score-threshold", "0.05",
            "--tile", "256", "--overlap", "32", "--batch-size", "1", "--workers", "1", "--threads", "1", "--sam", "box",
            "--progress", "none", *extra]


def _run(cmd: list[str], fault: str | None = None, sig: str = "SIGKILL", timeout: float = 300,
         kill_after: float | None = None, watch: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI; with ``kill_after``, send ``sig`` that many seconds after the start, or after
    ``watch`` (the output) appears when given. ``returncode`` < 0: died from that signal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEORS_FAULT")}
    if fault:
        env.update(GEORS_FAULT=fault, GEORS_FAULT_SIGNAL=sig)
    if kill_after is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if watch is not None:
        deadline = time.monotonic() + timeout
        while not watch.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    try:
        out, err = p.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        p.send_signal(getattr(signal, sig))
        out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _timed_run(cmd: list[str], out: Path) -> tuple[float, float]:
    """Seconds until ``out`` appears and until the run ends (to choose kill moments)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    appeared = None
    while p.poll() is None:
        if appeared is None and out.exists():
            appeared = time.monotonic() - t0
        time.sleep(0.01)
    total = time.monotonic() - t0
    return (appeared if appeared is not None else total), total


# ---------------------------------------------------------------- comparing outputs
def _snapshot(path: Path) -> dict:
    """Everything a resumed run must reproduce, independent of fids and row order."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        def geom(blob):
            from geors.gpkg import gpkg_geometry

            return shapely.to_wkb(gpkg_geometry(blob), byte_order=1, hex=True)

        dets = {}
        for fid, blob, cls, score, tile, scene in con.execute(
                "SELECT fid, geom, class, score, tile_id, scene FROM detections"):
            dets[fid] = (scene, tile, geom(blob), cls, round(score, 5))
        inst = sorted((scene, tile, geom(blob), cls, round(score, 5), dets.get(dfid))
                      for blob, cls, score, tile, scene, dfid in con.execute(
                          "SELECT geom, class, score, tile_id, scene, detection_fid FROM instances"))
        ledger = sorted(con.execute("SELECT scene, tile_id, col_off, row_off, width, height, status, n_detections, "
                                    "n_instances FROM geors_tiles WHERE status != 'failed'").fetchall())
        return {"detections": sorted(dets.values()), "instances": inst, "ledger": ledger}
    finally:
        con.close()


def _healthy(path: Path) -> bool:
    """SQLite integrity, GeoPackage header and a GDAL open of every layer."""
    try:
        con = sqlite3.connect(path)
        try:
            ok = con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            ok &= con.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        finally:
            con.close()
        for name, _ in pyogrio.list_layers(path):
            pyogrio.read_info(path, layer=name)
        return ok
    except Exception:  # noqa: BLE001 - any failure to read is a corrupt file here
        return False


def _healthy_copy(path: Path, tmp: Path) -> bool | None:
    """Health of what a kill left, checked on a copy (with its journal); None when there is no file."""
    if not path.exists():
        return None
    tmp.mkdir(exist_ok=True)
    copy = tmp / path.name
    for suffix in ("", "-journal", "-wal"):
        src = Path(f"{path}{suffix}")
        dst = Path(f"{copy}{suffix}")
        if dst.exists():
            dst.unlink()
        if src.exists():
            shutil.copyfile(src, dst)
    return _healthy(copy)


@dataclass
class Tally:
    kills_tried: int = 0
    kills_survived: int = 0
    files_checked: int = 0
    files_corrupted: int = 0
    failures: list = field(default_factory=list)
    moments: dict = field(default_factory=dict)  # when the kill landed: no output yet / mid-run / after the end

    def line(self) -> str:
        when = ", ".join(f"{k} {v}" for k, v in sorted(self.moments.items()))
        return (f"crash tests: kills survived {self.kills_survived} / {self.kills_tried}, files corrupted "
                f"{self.files_corrupted} / {self.files_checked} (kills landed: {when})")


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory):
    """The scene and a clean run's snapshot, shared by every case."""
    d = tmp_path_factory.mktemp("crash")
    scene = _scene(d / "scene.tif")
    clean = d / "clean.gpkg"
    r = _run(_command(scene, clean))
    assert r.returncode == 0, r.stderr[-3000:]
    snap = _snapshot(clean)
    assert len(snap["ledger"]) == TILES and snap["detections"] and snap["instances"]
    assert all(i[-1] is not None for i in snap["instances"])  # every instance links to its detection
    return scene, snap


def _kill_and_resume(scene: Path, snap: dict, out: Path, fault: str | None, sig: str, tally: Tally,
                     kill_after: float | None = None, max_resumes: int = 1, first: tuple[str, ...] = (),
                     after_output: bool = False) -> None:
    """One kill (at a kill point or after a delay), then --resume; counts into ``tally``.

    ``first`` are extra options of the killed run (``--resume`` when it continues an earlier one).
    """
    tally.kills_tried += 1
    label = f"{fault or f'after {kill_after:.1f}s'} {sig}"
    r = _run(_command(scene, out, *first), fault=fault, sig=sig, kill_after=kill_after,
             watch=out if after_output else None)
    killed_by_signal = r.returncode < 0 or r.returncode in (130, 143)
    existed = out.exists()
    moment = "after the end" if r.returncode == 0 else ("mid-run" if existed else "before the output")
    tally.moments[moment] = tally.moments.get(moment, 0) + 1
    left = _healthy_copy(out, out.parent / "copy")
    if left is not None:
        tally.files_checked += 1
        tally.files_corrupted += not left
    if r.returncode == 0:
        pass  # finished before the kill, or a SIGTERM/SIGINT after the last batch: the resume must change nothing
    elif not killed_by_signal:
        tally.failures.append(f"{label}: exit {r.returncode}: {r.stderr[-1500:]}")
        return
    for _ in range(max_resumes):
        resumed = _run(_command(scene, out, "--resume"))
        if resumed.returncode == 0:
            break
    else:
        tally.failures.append(f"{label}: --resume exit {resumed.returncode}: {resumed.stderr[-1500:]}")
        return
    tally.files_checked += 1
    if not _healthy(out):
        tally.files_corrupted += 1
        tally.failures.append(f"{label}: resumed file is not healthy")
        return
    got = _snapshot(out)
    if got != snap:
        diff = {k: (len(got[k]), len(snap[k])) for k in snap if got[k] != snap[k]}
        tally.failures.append(f"{label}: resumed output differs from a clean run (got, want): {diff}")
        return
    statuses = _run_statuses(out)
    if statuses[-1] != "finished" or "running" in statuses:
        tally.failures.append(f"{label}: run statuses {statuses}")
        return
    tally.kills_survived += 1


def _run_statuses(out: Path) -> list[str]:
    con = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT status FROM geors_runs ORDER BY fid")]
    finally:
        con.close()


def _report(tally: Tally) -> None:
    print("\n" + tally.line())
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.kills_survived == tally.kills_tried and tally.files_corrupted == 0


# ---------------------------------------------------------------- default (quick) case
def test_sigterm_then_sigkill_inside_a_commit_then_resume_gives_the_clean_result(crash_setup, tmp_path):
    """SIGTERM between batches (cancelled, message), SIGKILL inside a commit of the resumed run, resume again."""
    scene, snap = crash_setup
    out = tmp_path / "o.gpkg"
    r = _run(_command(scene, out), fault="batch:1", sig="SIGTERM")
    assert r.returncode == 130, r.stderr[-2000:]
    assert "--resume" in r.stderr and "tiles are saved" in r.stderr
    assert _run_statuses(out) == ["cancelled"] and _healthy(out)
    assert 0 < len(_snapshot(out)["ledger"]) < TILES
    # commit:1 is start_run's, commit:2 the next batch's: die inside that batch's transaction
    tally = Tally()
    _kill_and_resume(scene, snap, out, "commit:2", "SIGKILL", tally, first=("--resume",))
    _report(tally)
    assert _run_statuses(out) == ["cancelled", "interrupted", "finished"]


# ---------------------------------------------------------------- every point and signal (slow)
POINTS = [
    ("start", "SIGKILL"),       # before the output exists
    ("create", "SIGKILL"),      # GDAL made the first layer of the temporary file
    ("commit:1", "SIGKILL"),    # inside start_run's transaction: the file exists, no run row yet
    ("commit:2", "SIGKILL"),    # inside the first batch's transaction
    ("batch:2", "SIGKILL"),     # between batches
    ("finish", "SIGKILL"),      # late: every tile written, the run not marked finished
    ("commit:3", "SIGTERM"),
    ("batch:2", "SIGTERM"),
    ("commit:3", "SIGINT"),
    ("batch:1", "SIGINT"),
    ("finish", "SIGTERM"),
]


@pytest.mark.slow
def test_every_kill_point_and_signal_resumes_to_the_clean_result(crash_setup, tmp_path):
    scene, snap = crash_setup
    tally = Tally()
    for i, (point, sig) in enumerate(POINTS):
        _kill_and_resume(scene, snap, tmp_path / f"o{i}.gpkg", point, sig, tally)
    _report(tally)


@pytest.mark.slow
def test_random_kills_resume_to_the_clean_result(crash_setup, tmp_path):
    scene, snap = crash_setup
    appears, total = _timed_run(_command(scene, tmp_path / "timing.gpkg"), tmp_path / "timing.gpkg")
    rng = random.Random(int(os.environ.get("GEORS_CRASH_SEED", "8")))
    tally = Tally()
    n = int(os.environ.get("GEORS_CRASH_KILLS", "12"))
    for i in range(n):
        sig = rng.choice(["SIGKILL", "SIGKILL", "SIGTERM", "SIGINT"])
        if i % 3 == 0:  # any moment of the process's life, start-up included
            _kill_and_resume(scene, snap, tmp_path / f"r{i}.gpkg", None, sig, tally,
                             kill_after=rng.uniform(0.2, total))
        else:  # while the output is being written
            _kill_and_resume(scene, snap, tmp_path / f"r{i}.gpkg", None, sig, tally,
                             kill_after=rng.uniform(0.0, max(0.5, total - appears)), after_output=True)
    _report(tally)


# ---------------------------------------------------------------- two CLI runs creating one output (slow)
def _scene_at(path: Path, epsg: int, lon: float, lat: float) -> Path:
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    rng = np.random.default_rng(epsg)
    data = rng.integers(40, 90, size=(3, 256, 480), dtype=np.uint8)
    for cx, cy in ((60, 60), (300, 150), (400, 30)):
        data[:, cy:cy + 24, cx:cx + 24] = 250
    return scenes.write(path, data, CRS.from_epsg(epsg), Affine(0.5, 0, round(x), 0, -0.5, round(y)))


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] == "T"


def _centroids(path: Path, scene: str, to_crs) -> np.ndarray:
    df = pyogrio.read_dataframe(path, layer="instances", where=f"scene = '{scene}'").to_crs(to_crs)
    return np.array(sorted((g.centroid.x, g.centroid.y) for g in df.geometry)).reshape(-1, 2)


@pytest.mark.slow
def test_two_cli_runs_creating_one_output_at_once(tmp_path):
    """Two `geors run` on scenes in UTM 16N and 17N into one new output, released at the same moment."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to see that both processes reached their start line")
    a = _scene_at(tmp_path / "a16.tif", 32616, -84.5, 30.2)
    b = _scene_at(tmp_path / "b17.tif", 32617, -81.2, 29.7)
    for s in (a, b):  # references: each scene alone in its own CRS
        r = _run(_command(s, tmp_path / f"ref_{s.stem}.gpkg"))
        assert r.returncode == 0, r.stderr[-2000:]
    trials = int(os.environ.get("GEORS_RACE_TRIALS", "3"))
    correct = 0
    for trial in range(trials):
        out = tmp_path / f"race{trial}.gpkg"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GEORS_FAULT")},
               "GEORS_FAULT": "start", "GEORS_FAULT_SIGNAL": "SIGSTOP"}
        procs = [subprocess.Popen(_command(s, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for s in (a, b)]
        deadline = time.time() + 120
        while not all(_stopped(p.pid) for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        for p in procs:  # both wait at the start line: release them together
            os.kill(p.pid, signal.SIGCONT)
        results = [(p.communicate(timeout=300), p.returncode) for p in procs]
        assert [rc for _, rc in results] == [0, 0], [err[-2000:] for (_, err), _ in results]
        assert _healthy(out)
        layer_crs = pyogrio.read_info(out, layer="instances")["crs"]
        assert layer_crs in ("EPSG:32616", "EPSG:32617")
        for s in (a, b):  # every feature where the scene alone puts it, in the shared layer's CRS
            got = _centroids(out, s.name, layer_crs)
            want = _centroids(tmp_path / f"ref_{s.stem}.gpkg", s.name, layer_crs)
            assert len(got) == len(want) > 0 and np.allclose(got, want, rtol=0, atol=1e-3), s.name
        assert sorted(_run_statuses(out)) == ["finished", "finished"]
        correct += 1
    print(f"\nconcurrency (CLI): {correct} / {trials} trials of 2 simultaneous `geors run` creators correct")


@pytest.mark.slow  # a LocalCluster of 2 processes: ~35 s
def test_ctrl_c_to_the_process_group_ends_a_local_cluster_run(tmp_path):
    """Regression (issue 26, finding 8): Ctrl-C in a terminal signals the whole process group; the LocalCluster
    workers died with the batches in flight and the run waited for them forever, its run row left
    'running'. Now the workers ignore SIGINT, the batches in flight finish, exit 130, run 'cancelled'."""
    scene = scenes.rgb_uint8(tmp_path / "s.tif", 1500, 1500)
    out = tmp_path / "o.gpkg"
    p = subprocess.Popen([*CLI, "detect", str(scene), "-o", str(out), "--model", str(MODEL), "--device", "cpu",
                          "--batch-size", "1", "--workers", "2", "--scheduler", "local", "--threads", "1",
                          "--progress", "none"], start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        n = 0
        while n < 2 and time.monotonic() - t0 < 240 and p.poll() is None:
            time.sleep(0.3)
            if out.is_file() and out.stat().st_size:
                try:
                    con = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
                    n = con.execute("SELECT COUNT(*) FROM geors_tiles").fetchone()[0]
                    con.close()
                except sqlite3.Error:
                    pass
        assert n >= 2 and p.poll() is None, "the run did not get going"
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("the run did not end within 90 s of Ctrl-C")
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    con = sqlite3.connect(out)
    assert [r[0] for r in con.execute("SELECT status FROM geors_runs")] == ["cancelled"]
    con.close()


@pytest.mark.parametrize("limit", [30_000, 200_000])  # at creation, during the batches
def test_a_full_disk_is_one_message_and_never_leaves_a_non_geopackage(tmp_path, limit):
    """Regression (issue 26, finding 8): with the disk full while the output was created, GDAL left a
    half-made file without an error, it was renamed to the user's name and the run died with a traceback
    ('no such table: gpkg_geometry_columns'); full later, a traceback ('disk I/O error'). A file size limit
    (RLIMIT_FSIZE) stands in for a full disk at several moments of the run."""
    import resource

    scene = scenes.rgb_uint8(tmp_path / "s.tif", 600, 400)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.gpkg"

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([*CLI, "detect", str(scene), "-o", str(out), "--model", str(MODEL), "--device", "cpu",
                        "--score-threshold", "0", "--batch-size", "1", "--progress", "none"], preexec_fn=limited,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1, 2), r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    if r.returncode:
        assert sum(1 for ln in r.stderr.splitlines() if ln.startswith("Error:")) == 1, r.stderr[-2000:]
    left = [p.name for p in out_dir.iterdir()]
    assert left in ([], ["o.gpkg"]), left
    if left:  # whatever has the user's name is a GeoPackage with its layers
        con = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
        tables = {t[0] for t in con.execute("SELECT table_name FROM gpkg_contents")}
        con.close()
        assert {"detections", "geors_tiles", "geors_runs"} <= tables
