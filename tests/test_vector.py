import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.windows import Window

from geors.crs import areas_m2, pixel_box_to_polygon
from geors.errors import OutputError
from geors.results import Detection, Instance, TileResult
from geors.vector import GeoPackageWriter

import scenes

T = Affine(0.5, 0, 404000.0, 0, -0.5, 3285000.0)



def _result(i, crs_t=T, status="done", instances=True):
    poly = pixel_box_to_polygon((10 + i, 10, 20 + i, 30), crs_t)
    return TileResult("scene.tif", f"r0_c{i}", Window(i * 512, 0, 640, 640), status, gate_score=0.7, seconds=0.1,
                      detections=[Detection(poly, "tree", 0, 0.9, gate_score=0.7)],
                      instances=[Instance(poly, "tree", 0.9, 0.8, "box", 0, 0)] if instances else [])


@pytest.mark.parametrize("crs", [CRS.from_epsg(32617), CRS.from_wkt(scenes.ALBERS_WKT), CRS.from_epsg(4326)])
def test_crs_roundtrip_and_rows(tmp_path, crs):
    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, crs, ["detections", "instances"]) as w:
        w.start_run("test", {"k": 1})
        w.write_results([_result(0), _result(1)], model="m")
        w.finish_run()
    df = pyogrio.read_dataframe(out, layer="detections")
    assert ProjCRS.from_user_input(df.crs).equals(ProjCRS.from_user_input(crs.to_wkt()))
    assert len(df) == 2 and set(df["class"]) == {"tree"} and list(df["model"]) == ["m", "m"]
    assert df.geometry.iloc[0].equals_exact(pixel_box_to_polygon((10, 10, 20, 30), T), 1e-9)
    inst = pyogrio.read_dataframe(out, layer="instances")
    assert list(inst["detection_fid"]) == [1, 2]
    assert (inst.geometry.geom_type == "MultiPolygon").all()
    ledger = pyogrio.read_dataframe(out, layer="geors_tiles")
    assert list(ledger["tile_id"]) == ["r0_c0", "r0_c1"] and list(ledger["n_detections"]) == [1, 1]
    runs = pyogrio.read_dataframe(out, layer="geors_runs")
    assert runs["status"].tolist() == ["finished"] and '"k": 1' in runs["config"][0]
    # spatial index is maintained: a bbox query finds the features
    b = df.total_bounds
    assert len(pyogrio.read_dataframe(out, layer="detections", bbox=tuple(b))) == 2


def test_append_adds_rows_and_keeps_other_layers(tmp_path):
    out = tmp_path / "o.gpkg"
    crs = CRS.from_epsg(32617)
    with GeoPackageWriter(out, crs, ["detections", "instances"]) as w:
        w.write_results([_result(0)])
    with GeoPackageWriter(out, crs, ["detections"]) as w:
        w.write_results([_result(1, instances=False)])
        with pytest.raises(ValueError, match="instances"):
            w.write_results([_result(2)])
    assert len(pyogrio.read_dataframe(out, layer="detections")) == 2
    assert len(pyogrio.read_dataframe(out, layer="instances")) == 1
    assert len(pyogrio.read_dataframe(out, layer="geors_tiles")) == 2


def test_failed_batch_rolls_back_everything(tmp_path):
    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances"]) as w:
        w.write_results([_result(0)])
        bad = _result(1)
        bad.instances[0].detection_index = 5  # no such detection -> IndexError mid-transaction
        with pytest.raises(IndexError):
            w.write_results([_result(2), bad])
    assert len(pyogrio.read_dataframe(out, layer="detections")) == 1
    assert len(pyogrio.read_dataframe(out, layer="geors_tiles")) == 1
    assert sqlite3.connect(out).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_existing_layer_with_other_crs_gets_reprojected(tmp_path):
    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections"]) as w:
        w.write_results([_result(0, instances=False)])
    t4326 = Affine(0.00001, 0, -81.0, 0, -0.00001, 29.7)
    with GeoPackageWriter(out, CRS.from_epsg(4326), ["detections"]) as w:
        w.write_results([_result(1, crs_t=t4326, instances=False)])
    df = pyogrio.read_dataframe(out, layer="detections")
    assert df.crs.to_epsg() == 32617
    assert 300_000 < df.geometry.iloc[1].centroid.x < 700_000


def test_incompatible_existing_schema_is_refused_untouched(tmp_path):
    import geopandas as gpd

    out = tmp_path / "o.gpkg"
    gpd.GeoDataFrame({"foo": [1]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32617").to_file(
        out, layer="detections", driver="GPKG")
    before = out.read_bytes()
    with pytest.raises(OutputError, match="incompatible schema"):
        GeoPackageWriter(out, CRS.from_epsg(32617), ["detections"])
    assert out.read_bytes() == before


def test_not_a_geopackage_and_missing_dir(tmp_path):
    junk = tmp_path / "junk.gpkg"
    junk.write_text("hello")
    with pytest.raises(OutputError, match="not a GeoPackage"):
        GeoPackageWriter(junk, CRS.from_epsg(32617))
    assert junk.read_text() == "hello"
    with pytest.raises(OutputError, match="does not exist"):
        GeoPackageWriter(tmp_path / "nope" / "o.gpkg", CRS.from_epsg(32617))


def test_areas_projected_and_geographic():
    # UTM on its central meridian: 1 projected metre is 1 / 0.9996 m on the ground
    sq = shapely.box(499_950, 3_284_950, 500_050, 3_285_050)
    assert areas_m2([sq], CRS.from_epsg(32617))[0] == pytest.approx(10_000 / 0.9996**2, rel=1e-4)
    deg = shapely.box(10, 0, 10.001, 0.001)  # ~111 m x ~111 m at the equator
    assert areas_m2([deg], CRS.from_epsg(4326))[0] == pytest.approx(111.32 * 110.57, rel=0.01)
    assert np.all(areas_m2([], CRS.from_epsg(4326)) == 0)
    assert list(areas_m2([None, shapely.Polygon()], CRS.from_epsg(4326))) == [0, 0]


# ------------------------------------------------------------------ helpers for crash and race tests
GPKG_APPLICATION_ID = 0x47504B47


def _run_child(code: str, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python (same geors as this test) and return the finished process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _counts(path) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for t in ("detections", "instances", "geors_tiles", "geors_runs")}
    finally:
        con.close()


def _assert_healthy(path) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA application_id").fetchone()[0] == GPKG_APPLICATION_ID
    finally:
        con.close()
    info = pyogrio.read_info(path, layer="detections")
    assert info["geometry_type"] == "Polygon"


def _written_file(path, n=2):
    with GeoPackageWriter(path, CRS.from_epsg(32617), ["detections", "instances"]) as w:
        w.start_run("test", {"k": 1})
        w.write_results([_result(i) for i in range(n)])
        w.finish_run()
    return path


# ------------------------------------------------------------------ hot journal (issue 8, crash 1)
_KILL_INSIDE_TRANSACTION = """
    import os, signal, sqlite3, sys
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("PRAGMA cache_size = 2")  # spill pages into the file before COMMIT, as a big batch does
    con.execute("BEGIN IMMEDIATE")
    for i in range(3000):
        con.execute("INSERT INTO geors_tiles (scene, tile_id, status, message) VALUES ('s', ?, 'done', ?)",
                    (str(i), "x" * 200))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_hot_journal_of_a_killed_commit_is_rolled_back(tmp_path):
    out = _written_file(tmp_path / "o.gpkg")
    before = _counts(out)
    r = _run_child(_KILL_INSIDE_TRANSACTION, out)
    assert r.returncode == -signal.SIGKILL
    journal = tmp_path / "o.gpkg-journal"
    assert journal.exists() and journal.stat().st_size > 0  # a real hot journal
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances"]) as w:  # was: "not a GeoPackage"
        assert len(w.finished_tiles("scene.tif")) == 2
        w.write_results([_result(5)])
    assert not journal.exists()
    after = _counts(out)
    assert after["geors_tiles"] == before["geors_tiles"] + 1 and after["detections"] == before["detections"] + 1
    _assert_healthy(out)


def test_kill_at_the_commit_checkpoint_loses_only_that_batch(tmp_path):
    out = _written_file(tmp_path / "o.gpkg")
    before = _counts(out)
    r = _run_child("""
        import sys
        sys.path.insert(0, sys.argv[2])
        from rasterio.crs import CRS
        from geors.vector import GeoPackageWriter
        from test_vector import _result
        w = GeoPackageWriter(sys.argv[1], CRS.from_epsg(32617), ["detections", "instances"])
        w.start_run("child", {})
        w.write_results([_result(i) for i in range(10, 60)])  # killed before its COMMIT
        print("not reached")
    """, out, Path(__file__).parent, env={"GEORS_FAULT": "commit:2"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "not reached" not in r.stdout
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances"]) as w:
        assert [x["status"] for x in w.runs()] == ["finished", "running"]
    after = _counts(out)
    assert after == {**before, "geors_runs": before["geors_runs"] + 1}
    _assert_healthy(out)


def test_hot_journal_on_a_read_only_file_gets_a_message(tmp_path, monkeypatch):
    out = _written_file(tmp_path / "o.gpkg")
    _run_child(_KILL_INSIDE_TRANSACTION, out)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(out) else real(p, mode, **kw))
    with pytest.raises(OutputError, match="read-only.*chmod"):
        GeoPackageWriter(out, CRS.from_epsg(32617))


# ------------------------------------------------------------------ atomic creation (issue 8, crash 2)
def test_kill_during_creation_never_leaves_the_users_name(tmp_path):
    out = tmp_path / "o.gpkg"
    r = _run_child("""
        import sys
        from rasterio.crs import CRS
        from geors.vector import GeoPackageWriter
        GeoPackageWriter(sys.argv[1], CRS.from_epsg(32617), ["detections", "instances"])
    """, out, env={"GEORS_FAULT": "create"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers and all(n.startswith((".o.gpkg.creating-", "o.gpkg.lock")) for n in leftovers), leftovers
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances"]) as w:
        w.write_results([_result(0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]  # temporary file and lock cleaned up
    _assert_healthy(out)
    assert {"detections", "instances", "geors_tiles", "geors_runs"} <= {n for n, _ in pyogrio.list_layers(out)}


def test_new_file_has_every_layer_and_the_geopackage_header(tmp_path):
    out = tmp_path / "o.gpkg"
    GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances", "segmentation"]).close()
    _assert_healthy(out)
    assert {n for n, _ in pyogrio.list_layers(out)} == {"detections", "instances", "segmentation",
                                                         "geors_tiles", "geors_runs"}
    assert sqlite3.connect(out).execute("PRAGMA user_version").fetchone()[0] >= 10200


def test_new_files_are_geopackage_1_2_and_existing_files_keep_their_version(tmp_path):
    """GDAL 3.6 (QGIS 3.22 LTR) warns 'may only be partially supported' on GeoPackage 1.4 files."""
    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances"]) as w:
        w.write_results([_result(0)])
    assert sqlite3.connect(out).execute("PRAGMA user_version").fetchone()[0] == 10200
    _assert_healthy(out)
    # a user's 1.4 file gets geors' layers added and stays 1.4
    theirs = tmp_path / "theirs.gpkg"
    gdf = gpd.GeoDataFrame({"name": ["a"]}, geometry=[shapely.box(500000, 3285000, 500010, 3285010)], crs=32617)
    pyogrio.write_dataframe(gdf, theirs, layer="roads", driver="GPKG", dataset_options={"VERSION": "1.4"})
    with GeoPackageWriter(theirs, CRS.from_epsg(32617), ["detections", "instances"]) as w:
        w.write_results([_result(0)])
    assert sqlite3.connect(theirs).execute("PRAGMA user_version").fetchone()[0] == 10400
    assert {"roads", "detections"} <= {n for n, _ in pyogrio.list_layers(theirs)}


@pytest.mark.parametrize("leftover", ["zero_bytes", "sqlite_without_tables", "no_application_id"])
def test_empty_or_headerless_leftover_is_completed(tmp_path, leftover):
    out = tmp_path / "o.gpkg"
    if leftover == "zero_bytes":
        out.write_bytes(b"")
    elif leftover == "sqlite_without_tables":
        con = sqlite3.connect(out)
        con.execute("PRAGMA user_version = 7")  # writes the SQLite header, no table
        con.commit()
        con.close()
    else:
        _written_file(out)
        con = sqlite3.connect(out)
        con.execute("PRAGMA application_id = 0")
        con.execute("PRAGMA user_version = 0")
        con.commit()
        con.close()
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances"]) as w:
        w.write_results([_result(9)])
    _assert_healthy(out)
    assert len(pyogrio.read_dataframe(out, layer="detections")) == (3 if leftover == "no_application_id" else 1)


def test_half_initialised_geopackage_is_refused_with_what_to_do(tmp_path):
    out = tmp_path / "o.gpkg"
    con = sqlite3.connect(out)
    con.execute("CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT, srs_id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    before = out.read_bytes()
    with pytest.raises(OutputError, match="half-initialised.*delete it.*another output name"):
        GeoPackageWriter(out, CRS.from_epsg(32617))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]


# ------------------------------------------------------------------ two creators at once (issue 8)
# Two scenes far apart in two UTM zones; each process writes its own scene in its own CRS.
_SCENES = {"a": (32616, -84.5, 30.2), "b": (32617, -81.2, 29.7)}

_CREATOR = """
    import sys, time
    import geopandas, pyogrio  # imported before the start line, so both creators really start together
    from affine import Affine
    from pyproj import Transformer
    from rasterio.crs import CRS
    from rasterio.windows import Window
    from geors.results import Detection, Instance, TileResult
    from geors.crs import pixel_box_to_polygon
    from geors.vector import GeoPackageWriter
    out, name, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    epsg, lon, lat = {"a": (32616, -84.5, 30.2), "b": (32617, -81.2, 29.7)}[name]
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    t = Affine(0.5, 0, x, 0, -0.5, y)
    results = []
    for i in range(3):
        poly = pixel_box_to_polygon((10 + i, 10, 20 + i, 30), t)
        results.append(TileResult(name + ".tif", f"r0_c{i}", Window(i * 512, 0, 640, 640), "done",
                                  detections=[Detection(poly, "tree", 0, 0.9)],
                                  instances=[Instance(poly, "tree", 0.9, 0.8, "box", 0, 0)]))
    while time.time() < start_at:
        pass
    w = GeoPackageWriter(out, CRS.from_epsg(epsg), ["detections", "instances"])
    w.start_run("race " + name, {"scene": name})
    w.write_results(results)
    w.finish_run()
    w.close()
"""


def _race(outs: list[Path]) -> list[list[tuple[int, str]]]:
    """For each output, two processes that start creating it at the same instant (all pairs at once)."""
    start_at = time.time() + 2.0 + 1.0 * len(outs)  # all have imported by then; they start within microseconds
    pairs = [[subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CREATOR), str(out), name, str(start_at)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for name in ("a", "b")] for out in outs]
    finished = []
    for pair in pairs:
        done = []
        for p in pair:
            _, err = p.communicate(timeout=300)
            done.append((p.returncode, err))
        finished.append(done)
    return finished


def _check_race_output(out: Path, procs: list[tuple[int, str]]) -> None:
    from pyproj import Transformer

    assert [rc for rc, _ in procs] == [0, 0], [err[-2000:] for _, err in procs]
    _assert_healthy(out)
    assert {"detections", "instances", "geors_tiles", "geors_runs"} <= {n for n, _ in pyogrio.list_layers(out)}
    runs = pyogrio.read_dataframe(out, layer="geors_runs")
    assert sorted(runs["command"]) == ["race a", "race b"] and set(runs["status"]) == {"finished"}
    for layer in ("detections", "instances"):
        df = pyogrio.read_dataframe(out, layer=layer)
        assert len(df) == 6
        layer_crs = ProjCRS.from_user_input(df.crs)
        assert layer_crs.to_epsg() in (32616, 32617)  # the first creator's CRS, for every feature
        to_ll = Transformer.from_crs(layer_crs, 4326, always_xy=True)
        for scene, geom in zip(df["scene"], df.geometry, strict=True):
            _, lon, lat = _SCENES[scene[0]]
            glon, glat = to_ll.transform(geom.centroid.x, geom.centroid.y)
            assert abs(glon - lon) < 0.001 and abs(glat - lat) < 0.001, (layer, scene, glon, glat)
    assert len(pyogrio.read_dataframe(out, layer="geors_tiles")) == 6


@pytest.mark.parametrize("trials", [pytest.param(2, id="2 trials"),
                                    pytest.param(12, id="12 trials", marks=pytest.mark.slow)])
def test_two_processes_creating_the_same_output_at_once(tmp_path, trials):
    outs = [tmp_path / f"race{i}.gpkg" for i in range(trials)]
    for out, pair in zip(outs, _race(outs), strict=True):
        _check_race_output(out, pair)
    print(f"concurrency: {trials} trials of 2 simultaneous creators, {trials} correct")


# ------------------------------------------------------------------ read-only outputs (issue 8)
def _deny_write(monkeypatch, *paths):
    real = os.access
    denied = {str(p) for p in paths}
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if str(p) in denied and mode & os.W_OK else real(p, mode, **kw)))


def test_read_only_directory_and_file_give_output_errors(tmp_path, monkeypatch):
    existing = _written_file(tmp_path / "old.gpkg")
    _deny_write(monkeypatch, tmp_path)
    with pytest.raises(OutputError, match="not writable.*create it"):
        GeoPackageWriter(tmp_path / "new.gpkg", CRS.from_epsg(32617))
    with pytest.raises(OutputError, match="not writable.*append"):
        GeoPackageWriter(existing, CRS.from_epsg(32617))
    monkeypatch.undo()
    _deny_write(monkeypatch, existing)
    with pytest.raises(OutputError, match="read-only.*chmod"):
        GeoPackageWriter(existing, CRS.from_epsg(32617))
    assert not (tmp_path / "new.gpkg").exists()


def test_read_only_for_real_when_permissions_apply(tmp_path):
    existing = _written_file(tmp_path / "old.gpkg")
    existing.chmod(0o444)
    ro_dir = tmp_path / "ro"
    ro_dir.mkdir()
    ro_dir.chmod(0o555)
    try:
        if os.access(existing, os.W_OK) or os.access(ro_dir, os.W_OK):
            pytest.skip("running with privileges that ignore file permissions (root)")
        with pytest.raises(OutputError, match="read-only"):
            GeoPackageWriter(existing, CRS.from_epsg(32617))
        with pytest.raises(OutputError, match="not writable"):
            GeoPackageWriter(ro_dir / "o.gpkg", CRS.from_epsg(32617))
    finally:
        ro_dir.chmod(0o755)
        existing.chmod(0o644)


def test_write_refused_by_sqlite_is_an_output_error(tmp_path):
    with GeoPackageWriter(tmp_path / "o.gpkg", CRS.from_epsg(32617), ["detections", "instances"]) as w:
        w._con.execute("PRAGMA query_only = 1")  # what SQLite answers for a file that became read-only
        with pytest.raises(OutputError, match="read-only"):
            w.write_results([_result(0)])


# ------------------------------------------------------------------ runs (issue 8, crash 3)
def test_finish_run_statuses(tmp_path):
    for status in ("finished", "cancelled", "failed", "interrupted"):
        with GeoPackageWriter(tmp_path / "o.gpkg", CRS.from_epsg(32617)) as w:
            w.start_run("t", {"s": status})
            w.finish_run(status)
            assert w.runs()[-1]["status"] == status and w.runs()[-1]["finished"]
    with GeoPackageWriter(tmp_path / "o.gpkg", CRS.from_epsg(32617)) as w, pytest.raises(ValueError):
        w.finish_run("done")


def test_mark_interrupted_runs_only_marks_dead_processes(tmp_path):
    out = tmp_path / "o.gpkg"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ids = {}
        for name, pid, host in (("dead", dead_pid, None), ("live", live.pid, None), ("old", None, None),
                                ("remote", dead_pid, "another-host")):
            with GeoPackageWriter(out, CRS.from_epsg(32617)) as w:
                w.start_run(name, {})
                ids[name] = w.run_id
                w._con.execute('UPDATE geors_runs SET pid = ?, host = coalesce(?, host) WHERE run_id = ?',
                               (pid, host, w.run_id))
        with GeoPackageWriter(out, CRS.from_epsg(32617)) as w:
            live_before = sorted(r["command"] for r in w.live_runs())
            w.start_run("resume", {})
            marked = w.mark_interrupted_runs(w.run_id)
            status = {r["command"]: r["status"] for r in w.runs()}
    finally:
        live.kill()
        live.wait()
    assert sorted(marked) == sorted([ids["dead"], ids["old"]])
    assert live_before == ["live", "remote"]
    assert status == {"dead": "interrupted", "live": "running", "old": "interrupted", "remote": "running",
                      "resume": "running"}


def _old_writer_module():
    """geors.vector as it was before host/pid were recorded (from git), to write an older file."""
    import importlib.util

    src = subprocess.run(["git", "show", "0516b54:geors/vector.py"], cwd=Path(__file__).parent, capture_output=True,
                         text=True)
    if src.returncode != 0:
        pytest.skip("git history not available")
    path = Path(tempfile.mkdtemp()) / "old_vector.py"
    path.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location("old_vector", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_vector"] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop("old_vector", None)
    return mod


def test_file_from_the_previous_version_gets_the_new_run_columns(tmp_path):
    out = tmp_path / "o.gpkg"
    old = _old_writer_module()
    with old.GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances", "segmentation"]) as w:
        w.start_run("old", {"k": 1})
        w.write_results([_result(0)])
    from geors.results import SegmentPolygon

    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances", "segmentation"]) as w:
        w.start_run("new", {"k": 2})
        assert w.mark_interrupted_runs() == [w.runs()[0]["run_id"]]
        runs = w.runs()
        w.write_results([TileResult("s.tif", "r0_c0", Window(0, 0, 10, 10), "done", segmentation=[
            SegmentPolygon(shapely.box(500_000, 3_285_000, 500_010, 3_285_010), "water", 1, edge=True)])])
        assert [f["edge"] for _, f, _ in w.read_rows("segmentation")] == [1]
    assert [(r["command"], r["status"], r["pid"]) for r in runs] == [("old", "interrupted", None),
                                                                    ("new", "running", os.getpid())]
    assert runs[1]["config"] == {"k": 2} and runs[1]["host"]
    _assert_healthy(out)


# ------------------------------------------------------------------ area in m² (issue 7, defect 2)
def _ground_square(lon0, lat0, side_m, crs):
    """A side_m x side_m square on the ground (geodesic sides from its SW corner), in ``crs``."""
    from pyproj import Geod, Transformer

    g = Geod(ellps="WGS84")
    se = g.fwd(lon0, lat0, 90, side_m)[:2]
    ne = g.fwd(*se, 0, side_m)[:2]
    nw = g.fwd(lon0, lat0, 0, side_m)[:2]
    tr = Transformer.from_crs(4326, ProjCRS.from_user_input(crs), always_xy=True)
    return shapely.Polygon([tr.transform(*p) for p in ((lon0, lat0), se, ne, nw)])


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:32632", "EPSG:4326", scenes.ALBERS_WKT])
def test_area_is_true_ground_area_in_any_crs(crs):
    lon0, lat0 = (10.0, 60.0) if crs != scenes.ALBERS_WKT else (-96.0, 40.0)
    sq = _ground_square(lon0, lat0, 100.0, crs)
    if crs == "EPSG:3857":
        assert sq.area > 39_000  # planar area in web mercator: what was written before
    assert areas_m2([sq], CRS.from_user_input(crs))[0] == pytest.approx(10_000, rel=0.005)


# ------------------------------------------------------------------ per-batch CRS (issue 7, defect 1)
def test_results_in_another_crs_are_reprojected_and_keep_their_area(tmp_path):
    from pyproj import Transformer

    out = tmp_path / "o.gpkg"
    utm16 = CRS.from_epsg(32616)
    x, y = Transformer.from_crs(4326, 32616, always_xy=True).transform(-87.0, 35.0)
    t16 = Affine(0.5, 0, x, 0, -0.5, y)
    res = _result(0, crs_t=t16)
    with GeoPackageWriter(tmp_path / "same.gpkg", utm16, ["detections", "instances"]) as w:
        w.write_results([res])
    area16 = pyogrio.read_dataframe(tmp_path / "same.gpkg", layer="instances")["area_m2"][0]
    with GeoPackageWriter(out, CRS.from_epsg(32611), ["detections", "instances"]) as w:  # first scene: UTM 11N
        w.write_results([res], crs=utm16)
    for layer in ("detections", "instances"):
        df = pyogrio.read_dataframe(out, layer=layer)
        assert df.crs.to_epsg() == 32611
        lon, lat = Transformer.from_crs(32611, 4326, always_xy=True).transform(*df.geometry[0].exterior.coords[0]
                                                                              if layer == "detections" else
                                                                              df.geometry[0].geoms[0].exterior.coords[0])
        x0, y0 = res.detections[0].geometry.exterior.coords[0]
        lon16, lat16 = Transformer.from_crs(32616, 4326, always_xy=True).transform(x0, y0)
        assert abs(lon - lon16) < 1e-7 and abs(lat - lat16) < 1e-7
    inst = pyogrio.read_dataframe(out, layer="instances")
    assert inst["area_m2"][0] == pytest.approx(area16, rel=1e-9)
    assert area16 == pytest.approx(5 * 10 / 0.9996**2, rel=0.01)  # 10 x 20 px of 0.5 m, near UTM 16N's meridian


# ------------------------------------------------------------------ public row API for the pipeline
def test_write_rows_joins_a_transaction_and_delete_scene_rows(tmp_path):
    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections", "instances", "tiles", "tile_cores"]) as w:
        w.start_run("t", {"a": [1, 2]})
        w.write_results([_result(0), _result(1)])
        with w.transaction():
            f1 = w.write_rows("tiles", [{"scene": "scene.tif", "tile_id": "r0_c0"}], [shapely.box(0, 0, 1, 1)])
            f2 = w.write_rows("tile_cores", [{"scene": "other.tif", "tile_id": "r0_c0"}], [shapely.box(0, 0, 1, 1)])
            assert w._con.in_transaction  # still one transaction
        assert f1 == [1] and f2 == [1]
        with pytest.raises(ZeroDivisionError), w.transaction():  # rolled back as a whole
            w.write_rows("tiles", [{"scene": "x"}], [shapely.box(0, 0, 1, 1)])
            raise ZeroDivisionError
        assert w.runs()[0]["config"] == {"a": [1, 2]} and w.runs()[0]["status"] == "running"
        deleted = w.delete_scene_rows("scene.tif")
        assert deleted == {"detections": 2, "instances": 2, "tiles": 1, "geors_tiles": 2}
        assert w.finished_tiles("scene.tif") == {}
        assert len(w.write_features("tiles", [{"scene": "y"}], [shapely.box(0, 0, 1, 1)])) == 1
    assert len(pyogrio.read_dataframe(out, layer="tile_cores")) == 1
    assert list(pyogrio.read_dataframe(out, layer="tiles")["scene"]) == ["y"]
    assert len(pyogrio.read_dataframe(out, layer="detections", bbox=(404000, 3284000, 405000, 3286000))) == 0
    _assert_healthy(out)


# ------------------------------------------------------------------ kill points
def test_checkpoint_fires_on_the_nth_time_only(monkeypatch):
    from geors import faults

    monkeypatch.setattr(faults, "_hits", {})
    # Python's Ctrl-C handler, even when the test runner was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and Python then installs no handler): the point is the fault's count.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        faults.checkpoint("commit")  # unset: nothing
        monkeypatch.setenv("GEORS_FAULT", "commit:2")
        monkeypatch.setenv("GEORS_FAULT_SIGNAL", "INT")
        faults.checkpoint("create")
        faults.checkpoint("commit")
        with pytest.raises(KeyboardInterrupt):
            faults.checkpoint("commit")
        faults.checkpoint("commit")  # the third time: nothing
    finally:
        signal.signal(signal.SIGINT, previous)


def test_creator_that_waits_too_long_for_the_lock_gets_a_message(tmp_path, monkeypatch):
    from geors import vector
    from geors.output_lock import creation_lock

    out = tmp_path / "o.gpkg"
    monkeypatch.setattr(vector, "_LOCK_WAIT_S", 0.3)
    with creation_lock(out):  # another creator holds it (flock conflicts across open files)
        with pytest.raises(OutputError, match="another geors process .*pid .*creating this output"):
            GeoPackageWriter(out, CRS.from_epsg(32617))
    assert not out.exists()
    GeoPackageWriter(out, CRS.from_epsg(32617)).close()  # released: the next one goes ahead
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]


def test_read_rows_and_replace_rows_keep_the_layer_crs(tmp_path):
    from geors.gpkg import recover_hot_journal
    from geors.results import SegmentPolygon

    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["segmentation"]) as w:
        w.write_results([TileResult("s.tif", "r0_c0", Window(0, 0, 10, 10), "done", segmentation=[
            SegmentPolygon(shapely.box(500_000, 3_285_000, 500_010, 3_285_010), "water", 1, edge=True)])])
    t4326 = CRS.from_epsg(4326)
    with GeoPackageWriter(out, t4326, ["segmentation"]) as w:  # another CRS: the layer stays UTM 17N
        rows = w.read_rows("segmentation", "scene = ? AND edge = 1", ("s.tif",), fields=("class", "area_m2"))
        assert [(fid, f["class"]) for fid, f, _ in rows] == [(1, "water")]
        assert rows[0][2].equals(shapely.MultiPolygon([shapely.box(500_000, 3_285_000, 500_010, 3_285_010)]))
        new = rows[0][2].buffer(1)
        fids = w.replace_rows("segmentation", [1], [{"class": "water", "class_id": 1, "scene": "s.tif", "edge": 1}],
                              [new])
        (fid, f, g), = w.read_rows("segmentation")
        assert fid == fids[0] and f["edge"] == 1 and g.equals_exact(shapely.MultiPolygon([new]), 1e-6)
    assert recover_hot_journal(out) is False  # nothing to recover
    _run_child(_KILL_INSIDE_TRANSACTION, out)
    assert recover_hot_journal(out) is True and not (tmp_path / "o.gpkg-journal").exists()
    ro = sqlite3.connect(f"file:{out}?mode=ro", uri=True)  # readable read-only again
    assert ro.execute("SELECT count(*) FROM geors_tiles").fetchone()[0] == 1
    ro.close()


def test_creation_lock_is_held_until_the_first_commit(tmp_path, monkeypatch):
    from geors import vector

    out = tmp_path / "o.gpkg"
    monkeypatch.setattr(vector, "_LOCK_WAIT_S", 0.3)
    first = GeoPackageWriter(out, CRS.from_epsg(32617))
    with pytest.raises(OutputError, match="another geors process"):  # layers made, run row not yet committed
        GeoPackageWriter(out, CRS.from_epsg(32617))
    first.start_run("first", {})
    with GeoPackageWriter(out, CRS.from_epsg(32617)) as second:  # now it sees the first one's run
        assert [r["command"] for r in second.runs()] == ["first"]
    first.close()


def _reader(path, seconds):
    """Another program holding a read transaction on ``path`` (QGIS with a layer open, a long query)."""
    import subprocess
    import sys

    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('BEGIN'); "
            "c.execute('SELECT COUNT(*) FROM geors_runs').fetchone(); print('ready', flush=True); "
            "time.sleep(float(sys.argv[2]))")
    p = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_a_commit_waits_for_a_reader_then_names_it(tmp_path, monkeypatch):
    # regression (issue 26, finding 8): a reader holding a read transaction for 60 s made the run exit 2 with
    # "another process has held a write lock"; the commit now waits for readers (retried), and when one
    # outlasts the wait the message says a reader holds the file, and which process
    import geors.vector as vector

    monkeypatch.setattr(vector, "_BUSY_TIMEOUT_S", 0.5)
    monkeypatch.setattr(vector, "_READERS_WAIT_S", 4.0)
    out = tmp_path / "o.gpkg"
    with GeoPackageWriter(out, CRS.from_epsg(32617), ["detections"]) as w:
        w.start_run("test", {})
        reader = _reader(out, 2.0)  # shorter than the wait: the commit goes through after it
        w.finish_run("finished")
        reader.wait()
        assert [r["status"] for r in w.runs()] == ["finished"]
        reader = _reader(out, 60)  # longer than the wait
        try:
            with pytest.raises(OutputError, match=rf"pid {reader.pid} .*read transaction"):
                w.finish_run("cancelled")
        finally:
            reader.kill()
            reader.wait()
    assert [r["status"] for r in GeoPackageWriter(out, CRS.from_epsg(32617), ["detections"]).runs()] == ["finished"]
