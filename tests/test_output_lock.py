"""The writer on a system without ``fcntl`` and without ``/proc`` (Windows, as far as this Linux machine can show).

``os.O_DIRECTORY`` is removed as well (Windows has none).

``fcntl`` is made unimportable and every ``/proc`` access from outside psutil fails and is recorded (psutil may
read ``/proc`` on Linux: that is its platform backend, as Win32 calls are on Windows); ``os.kill(pid, 0)`` outside
psutil fails too (on Windows it would send a console control event).
"""

import builtins
import io
import os
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geors import output_lock, vector
from geors.crs import pixel_box_to_polygon
from geors.errors import OutputError
from geors.results import Detection, TileResult
from geors.vector import GeoPackageWriter

T = Affine(0.5, 0, 404000.0, 0, -0.5, 3285000.0)
UTM = CRS.from_epsg(32617)


def _from_psutil() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("psutil"):
            return True
        frame = frame.f_back
    return False


@pytest.fixture
def no_fcntl_no_proc(monkeypatch):
    """fcntl and msvcrt unimportable; /proc absent for everything but psutil. Yields the /proc attempts made."""
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    monkeypatch.delattr(os, "O_DIRECTORY", raising=False)  # Windows has none (and cannot fsync a folder)
    attempts = []

    def guard(real):
        def wrapped(path=".", *args, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)) and not isinstance(path, int):
                text = os.fsdecode(path)
                if text.startswith("/proc") and not _from_psutil():
                    attempts.append(text)
                    raise FileNotFoundError(2, "no /proc here", text)
            return real(path, *args, **kwargs)
        return wrapped

    for mod, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "listdir"), (os, "scandir"),
                      (os, "stat"), (os, "readlink")):
        monkeypatch.setattr(mod, name, guard(getattr(mod, name)))
    real_kill = os.kill

    def kill(pid, sig):
        if sig == 0 and not _from_psutil():
            attempts.append(f"os.kill({pid}, 0)")
            raise OSError("os.kill(pid, 0) is not a liveness probe on Windows")
        return real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(vector, "_LOCK_WAIT_S", 0.3)
    yield attempts


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _result(i):
    poly = pixel_box_to_polygon((10 + i, 10, 20 + i, 30), T)
    return TileResult("scene.tif", f"r0_c{i}", Window(i * 512, 0, 640, 640), "done", gate_score=0.7, seconds=0.1,
                      detections=[Detection(poly, "tree", 0, 0.9, gate_score=0.7)])


def test_fixture_blocks_fcntl_and_proc(no_fcntl_no_proc):
    with pytest.raises(ImportError):
        import fcntl  # noqa: F401
    with pytest.raises(FileNotFoundError):
        open("/proc/self/stat")
    assert no_fcntl_no_proc == ["/proc/self/stat"]


def test_second_writer_refused_while_the_first_holds_the_lock(tmp_path, no_fcntl_no_proc):
    out = tmp_path / "o.gpkg"
    first = GeoPackageWriter(out, UTM)  # layers made, run row not committed: it holds the lock
    assert (tmp_path / "o.gpkg.lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}"
    with pytest.raises(OutputError, match=r"another geors process \(pid \d+ on .*\) .*creating this output"):
        GeoPackageWriter(out, UTM)
    first.start_run("first", {})
    first.write_results([_result(0)])
    first.finish_run()
    first.close()
    assert not (tmp_path / "o.gpkg.lock").exists()
    with GeoPackageWriter(out, UTM) as second:  # released: the second one goes ahead and appends
        second.start_run("second", {})
        second.write_results([_result(1)])
        assert [r["command"] for r in second.runs()] == ["first", "second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]
    assert no_fcntl_no_proc == []


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, no_fcntl_no_proc):
    out = tmp_path / "o.gpkg"
    lock = tmp_path / "o.gpkg.lock"
    lock.write_text(f"pid {_dead_pid()} on {socket.gethostname()}")  # a run killed while it held the lock
    with GeoPackageWriter(out, UTM) as w:
        w.start_run("after a crash", {})
        w.write_results([_result(0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]
    assert no_fcntl_no_proc == []


def test_lock_of_a_live_process_or_another_host_is_not_taken_over(tmp_path, no_fcntl_no_proc):
    out = tmp_path / "o.gpkg"
    lock = tmp_path / "o.gpkg.lock"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for holder in (f"pid {live.pid} on {socket.gethostname()}", f"pid {_dead_pid()} on another-host.example"):
            lock.write_text(holder)
            with pytest.raises(OutputError, match="another geors process"):
                GeoPackageWriter(out, UTM)
            assert lock.read_text() == holder and not out.exists()
    finally:
        live.kill()
        live.wait()
    assert no_fcntl_no_proc == []


def test_liveness_and_abandoned_runs_through_psutil(tmp_path, no_fcntl_no_proc):
    now = datetime.now(UTC).isoformat()
    assert output_lock.process_alive(os.getpid(), now)
    assert not output_lock.process_alive(_dead_pid(), now)
    long_ago = (datetime.now(UTC) - timedelta(days=3650)).isoformat()  # a younger process with that pid: reused
    assert not output_lock.process_alive(os.getpid(), long_ago)
    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, UTM) as w:
        w.start_run("killed", {})
        killed = w.run_id
    con = sqlite3.connect(out)
    con.execute("UPDATE geors_runs SET pid = ? WHERE run_id = ?", (_dead_pid(), killed))
    con.commit()
    con.close()
    with GeoPackageWriter(out, UTM) as w:
        assert w.live_runs() == []
        assert w.mark_interrupted_runs() == [killed]
    assert no_fcntl_no_proc == []


def test_holders_names_another_process_with_the_file_open(tmp_path, no_fcntl_no_proc):
    path = tmp_path / "f.gpkg"
    path.write_bytes(b"x")
    code = "import sys, time; f = open(sys.argv[1], 'rb'); print('ready', flush=True); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert f"pid {p.pid} " in output_lock.holders(path)
    finally:
        p.kill()
        p.wait()
    assert output_lock.holders(tmp_path / "nobody-has-this-open") == ""
    assert no_fcntl_no_proc == []
