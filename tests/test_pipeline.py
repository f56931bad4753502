"""Pipeline over real files: seams, nodata skipping, resume, Dask LocalCluster."""

import json

import cv2
import numpy as np
import pyogrio
import pytest
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS

from geors.cli.main import main
from geors.config import ExecutionConfig, OutputConfig, PipelineConfig, TilingConfig
from geors.crs import pixel_box_to_polygon
from geors.pipeline import process_scenes
from geors.results import Detection, TileResult

import scenes


class BrightBlobStage:
    """A real (if simple) stage: bright connected components -> boxes.

    It returns every blob it sees in the tile, overlap included, like every stage
    must: keeping only what a tile's core owns is the pipeline's job.
    """

    name = "bright-blobs"
    layers = ("detections",)
    classes = ()
    skip_nodata = True

    def __init__(self):
        self.calls = 0

    def prepare(self, scenes):
        pass

    def default_tiling(self):
        return 640, 128

    def describe(self):
        return {"model": "bright-blobs"}

    def tile_inputs(self, scene, tiles):
        return None

    def __call__(self, batch):
        self.calls += 1
        out = []
        for t, img in zip(batch.tiles, batch.images, strict=True):
            m = (img.image.min(0) > 0.99).astype(np.uint8)
            n, _, st, _ = cv2.connectedComponentsWithStats(m)
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, a in st[1:] if a >= 25], float).reshape(-1, 4)
            dets = [Detection(pixel_box_to_polygon(b, t.transform), "blob", 0, 1.0, tuple(b)) for b in boxes]
            out.append(TileResult(batch.scene.name, t.id, t.window, "done", detections=dets))
        return out


def cfg(tile_size=640, overlap=128, batch_size=8, workers=1, scheduler=None, **output):
    return PipelineConfig(detect=None, tiling=TilingConfig(tile_size, overlap),
                          execution=ExecutionConfig(batch_size=batch_size, workers=workers, scheduler=scheduler),
                          output=OutputConfig(**output))


def _blob_scene(path, w=1500, h=1100):
    rng = np.random.default_rng(0)
    data = rng.integers(30, 80, size=(3, h, w), dtype=np.uint8)
    blobs = [(500, 480, 40), (100, 100, 20), (1010, 500, 30), (1200, 900, 25), (0, 1080, 15)]
    for x, y, s in blobs:  # several straddle core boundaries (500, 1012 / 454, ...)
        data[:, y:y + s, x:x + s] = 255
    return scenes.write(path, data, CRS.from_epsg(32617), Affine(0.5, 0, 404000.0, 0, -0.5, 3285000.0)), blobs


def test_objects_across_seams_are_written_once(tmp_path):
    p, blobs = _blob_scene(tmp_path / "blobs.tif")
    out = tmp_path / "o.gpkg"
    summary = process_scenes([p], out, BrightBlobStage(), cfg(batch_size=2))
    df = pyogrio.read_dataframe(out, layer="detections")
    assert summary.detections == len(df) == len(blobs)
    for x, y, _size in blobs:
        x0, y0 = Affine(0.5, 0, 404000.0, 0, -0.5, 3285000.0) @ (x, y)
        hits = df[df.geometry.contains(__import__("shapely").Point(x0 + 0.1, y0 - 0.1))]
        assert len(hits) == 1
    ledger = pyogrio.read_dataframe(out, layer="geors_tiles")
    assert len(ledger) == summary.tiles == 6 and set(ledger["status"]) == {"done"}
    config = json.loads(pyogrio.read_dataframe(out, layer="geors_runs")["config"][0])
    assert config["scenes"][0]["stretch"]["percentiles"] == [2.0, 98.0]
    assert config["tile_size"] == 640 and config["overlap"] == 128


def test_nodata_tiles_skip_the_stage_and_are_ledgered(tmp_path):
    p = scenes.nodata_border(tmp_path / "nd.tif")
    stage = BrightBlobStage()
    s = process_scenes([p], tmp_path / "o.gpkg", stage, cfg(256, 0, batch_size=100))
    ledger = pyogrio.read_dataframe(tmp_path / "o.gpkg", layer="geors_tiles")
    assert s.nodata == (ledger["status"] == "nodata").sum() == 4 + 3  # first tile row and column
    assert s.processed == len(ledger) - s.nodata


def test_resume_skips_finished_tiles_and_refuses_other_grid(tmp_path):
    p, _ = _blob_scene(tmp_path / "blobs.tif")
    out = tmp_path / "o.gpkg"
    process_scenes([p], out, BrightBlobStage(), cfg(batch_size=3))
    stage = BrightBlobStage()
    s = process_scenes([p], out, stage, cfg(batch_size=3, resume=True))
    assert s.skipped_resume == 6 and stage.calls == 0
    assert len(pyogrio.read_dataframe(out, layer="detections")) == 5
    # half-finished: delete ledger rows of some tiles, resume redoes only those
    import sqlite3
    con = sqlite3.connect(out)
    con.execute("DELETE FROM geors_tiles WHERE tile_id IN ('r1_c1', 'r1_c2')")
    con.commit()
    con.close()
    s = process_scenes([p], out, BrightBlobStage(), cfg(batch_size=3, resume=True))
    assert s.skipped_resume == 4 and s.processed == 2
    from geors.errors import OutputError
    with pytest.raises(OutputError, match="--tile: was 640, now 512"):
        process_scenes([p], out, BrightBlobStage(), cfg(512, 64, resume=True))
    # a file whose runs recorded no options (older geors): the ledger's tile windows are compared, and the
    # refusal comes before the file is touched (regression: a 'failed' run row was added first)
    import json as _json
    con = sqlite3.connect(out)
    for fid, conf in con.execute("SELECT fid, config FROM geors_runs").fetchall():
        c = _json.loads(conf)
        c.pop("result_key", None)
        con.execute("UPDATE geors_runs SET config = ? WHERE fid = ?", (_json.dumps(c), fid))
    con.commit()
    con.close()
    before = out.read_bytes()
    with pytest.raises(OutputError, match="another tile grid"):
        process_scenes([p], out, BrightBlobStage(), cfg(512, 64, resume=True))
    assert out.read_bytes() == before


def test_synchronous_and_threads_agree(tmp_path):
    p, _ = _blob_scene(tmp_path / "blobs.tif")
    a = process_scenes([p], tmp_path / "a.gpkg", BrightBlobStage(), cfg(scheduler="synchronous"))
    b = process_scenes([p], tmp_path / "b.gpkg", BrightBlobStage(), cfg(workers=2))
    ga = pyogrio.read_dataframe(tmp_path / "a.gpkg", layer="detections").sort_values("tile_id")
    gb = pyogrio.read_dataframe(tmp_path / "b.gpkg", layer="detections").sort_values("tile_id")
    assert a.detections == b.detections and list(ga["tile_id"]) == list(gb["tile_id"])


@pytest.mark.slow
def test_dask_local_cluster(tmp_path):
    pytest.importorskip("distributed")
    p, blobs = _blob_scene(tmp_path / "blobs.tif")
    s = process_scenes([p], tmp_path / "o.gpkg", BrightBlobStage(), cfg(scheduler="local", workers=2))
    assert s.detections == len(blobs)


# ----------------------------------------------------------------- CLI
def test_cli_info_tiles_and_bad_inputs(tmp_path):
    r = CliRunner()
    p = scenes.int16_albers(tmp_path / "albers.tif")
    res = r.invoke(main, ["info", str(p), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["crs"] == "Custom Albers (custom WKT)" and info["tiles"] == 1 and info["dtype"] == "int16"
    out = tmp_path / "tiles.gpkg"
    res = r.invoke(main, ["tiles", str(p), "-o", str(out), "--tile", "256", "--overlap", "64",
                          "--progress", "jsonl"])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "start" and events[-2]["event"] == "end" and events[-2]["done"] == 6
    assert events[-1]["event"] == "summary" and events[-1]["tiles"] == 6
    tiles = pyogrio.read_dataframe(out, layer="tiles")
    cores = pyogrio.read_dataframe(out, layer="tile_cores")
    assert len(tiles) == len(cores) == 6
    assert abs(cores.geometry.area.sum() - 513 * 389 * 4) < 1e-6  # cores partition the scene (2 m pixels)
    assert tiles["nodata_fraction"].max() == 0 and tiles["mean_brightness"].between(0, 1).all()
    from pyproj import CRS as P
    assert P.from_user_input(tiles.crs).equals(P.from_wkt(scenes.ALBERS_WKT))

    # bad inputs: exit 2, message names the file, existing outputs untouched
    before = out.read_bytes()
    for args, needle in [
        (["info", str(tmp_path / "missing.tif")], "missing.tif"),
        (["info", str(p), "--bands", "9"], "band index 9"),
        (["tiles", str(p), "-o", str(tmp_path / "nodir" / "x.gpkg")], "does not exist"),
        (["tiles", str(p), "-o", str(out), "--tile", "100", "--overlap", "200"], "overlap"),
    ]:
        res = r.invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output
    assert out.read_bytes() == before
    assert r.invoke(main, ["--version"]).exit_code == 0

    # an existing GeoPackage whose 'tiles' layer has another schema is refused, byte for byte intact
    import geopandas as gpd
    import shapely
    other = tmp_path / "other.gpkg"
    gpd.GeoDataFrame({"name": ["x"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:32617").to_file(
        other, layer="tiles", driver="GPKG")
    before = other.read_bytes()
    res = r.invoke(main, ["tiles", str(p), "-o", str(other)])
    assert res.exit_code == 2 and "incompatible schema" in res.output and "other.gpkg" in res.output
    assert other.read_bytes() == before


class FlakyStage(BrightBlobStage):
    """Fails on the first call, like a model running out of memory once."""

    def __call__(self, batch):
        if self.calls == 0:
            self.calls += 1
            raise RuntimeError("out of memory")
        return super().__call__(batch)


def test_failed_tiles_are_ledgered_and_resume_retries_them(tmp_path):
    p, blobs = _blob_scene(tmp_path / "blobs.tif")
    out = tmp_path / "o.gpkg"
    s = process_scenes([p], out, FlakyStage(), cfg(batch_size=2, workers=1))
    assert s.failed == 2 and s.processed == 4
    ledger = pyogrio.read_dataframe(out, layer="geors_tiles")
    assert (ledger["status"] == "failed").sum() == 2
    assert ledger.loc[ledger["status"] == "failed", "message"].str.contains("out of memory").all()
    s2 = process_scenes([p], out, BrightBlobStage(), cfg(batch_size=2, resume=True))
    assert s2.skipped_resume == 4 and s2.processed == 2
    assert len(pyogrio.read_dataframe(out, layer="detections")) == len(blobs)


# ----------------------------------------------------------------- archives, CRSs, inputs, cancellation
def _blob_scene_in(path, epsg, x0, y0):
    rng = np.random.default_rng(1)
    data = rng.integers(30, 80, size=(3, 300, 400), dtype=np.uint8)
    data[:, 100:130, 200:230] = 255  # one blob, centre at pixel (215, 115)
    t = Affine(1.0, 0, x0, 0, -1.0, y0)
    scenes.write(path, data, CRS.from_epsg(epsg), t)
    return path, t * (215, 115)


def test_archive_in_several_crs_is_reprojected_into_the_output_crs(tmp_path):
    """Regression: every scene's features were written in the first scene's CRS without reprojection."""
    from pyproj import Transformer

    a, ca = _blob_scene_in(tmp_path / "a.tif", 32611, 500000.0, 4200000.0)   # UTM 11N
    b, cb = _blob_scene_in(tmp_path / "b.tif", 32616, 400000.0, 3300000.0)   # UTM 16N, thousands of km east
    out = tmp_path / "o.gpkg"
    s = process_scenes([a, b], out, BrightBlobStage(), cfg(256, 64))
    assert s.reprojected_scenes == ["b.tif"] and s.detections == 2
    df = pyogrio.read_dataframe(out, layer="detections")
    assert df.crs.to_epsg() == 32611
    got = df.set_index("scene").geometry.centroid
    assert got["a.tif"].distance(__import__("shapely").Point(ca)) < 1.0
    bx, by = Transformer.from_crs(32616, 32611, always_xy=True).transform(*cb)
    assert got["b.tif"].distance(__import__("shapely").Point(bx, by)) < 1.0
    # --crs chooses the output CRS; --per-scene writes one GeoPackage per scene in its own CRS
    s = process_scenes([a, b], tmp_path / "w.gpkg", BrightBlobStage(), cfg(256, 64, crs="EPSG:4326"))
    assert pyogrio.read_dataframe(tmp_path / "w.gpkg", layer="detections").crs.to_epsg() == 4326
    process_scenes([a, b], tmp_path / "each", BrightBlobStage(), cfg(256, 64, per_scene=True))
    assert pyogrio.read_dataframe(tmp_path / "each" / "b.gpkg", layer="detections").crs.to_epsg() == 32616


def test_inputs_folders_globs_lists_and_a_broken_scene(tmp_path):
    from geors.errors import SceneReadError
    from geors.pipeline import expand_inputs

    d = tmp_path / "archive"
    (d / "sub").mkdir(parents=True)
    a, _ = _blob_scene_in(d / "a.tif", 32611, 500000.0, 4200000.0)
    b, _ = _blob_scene_in(d / "sub" / "b.tif", 32611, 500000.0, 4100000.0)
    (d / "broken.tif").write_bytes(b"II*\x00not really a tiff")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# scenes\n{a}\nsub/b.tif\n".replace("sub/b.tif", str(b.relative_to(tmp_path))))
    found, problems = expand_inputs([str(d)])
    assert [p.split("/")[-1] for p in found] == ["a.tif", "broken.tif", "b.tif"] and not problems
    found, problems = expand_inputs([str(d / "*.tif"), f"@{lst}", str(tmp_path / "none*.tif")])
    assert [p.split("/")[-1] for p in found] == ["a.tif", "broken.tif", "b.tif"]
    assert problems[0]["reason"] == "no file matches this pattern"
    # a broken scene is reported and skipped; the rest is written
    s = process_scenes([str(d)], tmp_path / "o.gpkg", BrightBlobStage(), cfg(256, 64))
    assert s.scenes == 2 and s.detections == 2 and s.scenes_skipped[0]["path"].endswith("broken.tif")
    # --strict stops before anything is written
    with pytest.raises(SceneReadError, match="broken.tif"):
        process_scenes([str(d)], tmp_path / "s.gpkg", BrightBlobStage(), cfg(256, 64, strict=True))
    assert not (tmp_path / "s.gpkg").exists()
    r = CliRunner().invoke(main, ["tiles", str(d), "-o", str(tmp_path / "t.gpkg")])
    assert r.exit_code == 1 and "broken.tif" in r.output  # exit 1 at the end, the rest written
    assert len(pyogrio.read_dataframe(tmp_path / "t.gpkg", layer="tiles")) == 2


class SlowStage(BrightBlobStage):
    """Records when each batch ran, to see whether workers stay busy across scene boundaries."""

    def __init__(self, delay=0.3):
        super().__init__()
        self.delay = delay
        self.log = []

    def __call__(self, batch):
        import threading
        import time
        t0 = time.monotonic()
        time.sleep(self.delay * len(batch.tiles))
        self.log.append((batch.scene.name, t0, time.monotonic(), threading.get_ident()))
        return super().__call__(batch)


def test_workers_stay_busy_across_scene_boundaries(tmp_path):
    a, _ = _blob_scene_in(tmp_path / "a.tif", 32611, 500000.0, 4200000.0)   # 4 tiles of 256: batches of 3 and 1
    b, _ = _blob_scene_in(tmp_path / "b.tif", 32611, 500000.0, 4100000.0)
    stage = SlowStage()
    process_scenes([a, b], tmp_path / "o.gpkg", stage, cfg(256, 64, batch_size=3, workers=2))
    first_b = min(t0 for n, t0, _, _ in stage.log if n == "b.tif")
    last_a_end = max(t1 for n, _, t1, _ in stage.log if n == "a.tif")
    assert first_b < last_a_end  # scene b started while scene a's last batch was still running


def test_cancel_finishes_batches_in_flight_and_resume_completes(tmp_path):
    import threading

    from geors.errors import Cancelled

    p, blobs = _blob_scene(tmp_path / "blobs.tif")
    out = tmp_path / "o.gpkg"
    cancel = threading.Event()

    class CancelAfterFirst(BrightBlobStage):
        def __call__(self, batch):
            cancel.set()
            return super().__call__(batch)

    with pytest.raises(Cancelled) as exc:
        process_scenes([p], out, CancelAfterFirst(), cfg(batch_size=2), cancel=cancel)
    assert exc.value.summary.saved == 2 and exc.value.exit_code == 130
    runs = pyogrio.read_dataframe(out, layer="geors_runs")
    assert list(runs["status"]) == ["cancelled"]
    s = process_scenes([p], out, BrightBlobStage(), cfg(batch_size=2, resume=True))
    assert s.skipped_resume == 2 and s.processed == 4
    assert len(pyogrio.read_dataframe(out, layer="detections")) == len(blobs)


def test_config_toml_round_trip_and_validation(tmp_path):
    from geors.config import DetectConfig, MaskConfig
    from geors.errors import ConfigError

    c = PipelineConfig(detect=DetectConfig(score_threshold=0.25, use_gate=False), masks=MaskConfig("box"),
                       tiling=TilingConfig(512, 64, (3, 2, 1)), execution=ExecutionConfig(workers=2))
    f = tmp_path / "run.toml"
    f.write_text(c.to_toml())
    assert PipelineConfig.from_toml(f) == c
    f.write_text("[detect]\nscore_treshold = 0.2\n")
    with pytest.raises(ConfigError, match="score_treshold"):
        PipelineConfig.from_toml(f)
    for bad, needle in [(TilingConfig(0), "--tile"), (TilingConfig(256, 300), "--overlap"),
                        (ExecutionConfig(batch_size=0), "--batch-size"), (DetectConfig(score_threshold=2), "score")]:
        with pytest.raises(ConfigError, match=needle):
            PipelineConfig(tiling=bad if isinstance(bad, TilingConfig) else TilingConfig(),
                           execution=bad if isinstance(bad, ExecutionConfig) else ExecutionConfig(),
                           detect=bad if isinstance(bad, DetectConfig) else DetectConfig()).validate()


@pytest.mark.slow
def test_local_cluster_run_prints_no_distributed_noise(tmp_path):
    """Regression: every LocalCluster run printed distributed's INFO logs and 'Worker process still alive
    after 4.0 seconds, killing' on shutdown."""
    import subprocess
    import sys

    p, _ = _blob_scene(tmp_path / "blobs.tif")
    # geors detect with the built-in model (tiles runs no model and has no --scheduler since issue 28)
    r = subprocess.run([sys.executable, "-m", "geors", "detect", str(p), "-o", str(tmp_path / "t.gpkg"),
                        "--scheduler", "local", "--workers", "2", "--threads", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "INFO" not in r.stderr and "still alive" not in r.stderr, r.stderr


def test_a_gate_that_skips_every_tile_is_reported(tmp_path, caplog):
    class AllGated(BrightBlobStage):
        def __call__(self, batch):
            out = super().__call__(batch)
            for r in out:
                r.status, r.detections = "gated", []
            return out

    p, _ = _blob_scene(tmp_path / "blobs.tif")
    import logging
    with caplog.at_level(logging.WARNING, logger="geors.pipeline"):
        s = process_scenes([p], tmp_path / "o.gpkg", AllGated(), cfg())
    assert s.gated == s.tiles == 6
    assert "--no-gate" in caplog.text and "blobs.tif" in caplog.text
