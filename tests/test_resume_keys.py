"""`--resume` never mixes two results in one file, and `--overwrite` never loses rows to a refusal (issue 26,
finding 1): the resume key is the whole result-affecting configuration, compared as a union of keys, and the
scene fingerprint covers every byte of the raster."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from geors.cli.main import main
from geors.config import ExecutionConfig, OutputConfig, PipelineConfig, TilingConfig
from geors.errors import OutputError
from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.models.registry import save_model
from geors.pipeline import process_scenes
from geors.results import TileResult

import scenes


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    model = R2CNN(R2CNNConfig(num_classes=1, anchor_scales=[16.0, 32.0]))
    path = tmp_path_factory.mktemp("m") / "rand.safetensors"
    save_model(model, {"classes": ["blob"], "bands": 3, "tile_size": 256, "overlap": 64,
                       "gate_threshold": 0.0}, path)
    return path


def geors(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def n_rows(path, table):
    con = sqlite3.connect(path)
    try:
        return con.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    finally:
        con.close()


def drop_ledger_rows(path, n):
    """A run that stopped early: the last ``n`` ledger rows are gone."""
    con = sqlite3.connect(path)
    con.execute("DELETE FROM geors_tiles WHERE fid IN (SELECT fid FROM geors_tiles ORDER BY fid DESC LIMIT ?)", (n,))
    con.commit()
    con.close()


@pytest.mark.parametrize("first,second", [("detect", "run"), ("run", "detect")])
def test_detect_and_run_with_masks_never_resume_each_other(tmp_path, random_model, first, second):
    # regression: both stages are named 'detect' and only keys present on both sides were compared, so a
    # killed `geors detect` resumed by `geors run --sam box` gave exit 0 and a file with instances for half
    # of the detections (and the reverse)
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    masks = {"detect": [], "run": ["--sam", "box"]}
    common = ["--model", random_model, "--score-threshold", "0.0", "--device", "cpu", "--batch-size", "1"]
    r = geors(first, scene, "-o", out, *common, *masks[first])
    assert r.exit_code == 0, r.output
    drop_ledger_rows(out, 3)
    before = out.read_bytes()
    r = geors(second, scene, "-o", out, *common, *masks[second], "--resume")
    assert r.exit_code == 2, r.output
    assert "the command" in r.output and "--sam" in r.output  # named: the layers and the mask method differ
    assert out.read_bytes() == before


def test_another_simplify_is_refused_by_name(tmp_path, random_model):
    # regression: DetectStage.describe() had no simplify_px/multipart, so --simplify 3 resumed a --simplify 0.5 run
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    common = ["--model", random_model, "--score-threshold", "0.0", "--device", "cpu", "--sam", "box"]
    assert geors("run", scene, "-o", out, *common).exit_code == 0
    drop_ledger_rows(out, 2)
    r = geors("run", scene, "-o", out, *common, "--simplify", "3", "--resume")
    assert r.exit_code == 2 and "--simplify: was 0.5, now 3.0" in r.output, r.output
    assert geors("run", scene, "-o", out, *common, "--resume").exit_code == 0


def test_tiles_statistics_switch_is_a_resume_key(tmp_path):
    # regression: `tiles --no-stats --resume` continued a run with statistics (NULL and real values mixed)
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "t.gpkg"
    assert geors("tiles", scene, "-o", out, "--tile", "256", "--overlap", "64").exit_code == 0
    drop_ledger_rows(out, 2)
    r = geors("tiles", scene, "-o", out, "--tile", "256", "--overlap", "64", "--no-stats", "--resume")
    assert r.exit_code == 2 and "--no-stats: was True, now False" in r.output, r.output


def _striped_scene(path, flip_bottom=False):
    """Uncompressed, strip-organised: the first 64 KiB of the file hold the header and the top rows only."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, size=(3, 400, 600), dtype=np.uint8)
    if flip_bottom:
        data[:, 200:] = data[:, 200:][:, :, ::-1]
    with rasterio.open(path, "w", driver="GTiff", width=600, height=400, count=3, dtype="uint8", crs="EPSG:32617",
                       transform=rasterio.Affine(0.5, 0, 404000.0, 0, -0.5, 3285000.0), interleave="pixel",
                       tiled=False, blockysize=8) as dst:
        dst.write(data)
    return path


def test_a_raster_changed_after_its_first_64_kib_is_not_resumed(tmp_path):
    # regression: the fingerprint hashed the grid and the first 64 KiB, so the same scene with its bottom half
    # mirrored (same name, size and header) was resumed into the output of the original
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    orig = _striped_scene(a / "s.tif")
    changed = _striped_scene(b / "s.tif", flip_bottom=True)
    assert orig.stat().st_size == changed.stat().st_size
    assert orig.read_bytes()[:1 << 16] == changed.read_bytes()[:1 << 16]
    out = tmp_path / "t.gpkg"
    assert geors("tiles", orig, "-o", out, "--tile", "256", "--overlap", "64").exit_code == 0
    drop_ledger_rows(out, 2)
    r = geors("tiles", changed, "-o", out, "--tile", "256", "--overlap", "64", "--resume")
    assert r.exit_code == 2 and "is not the raster this output was made from" in r.output, r.output
    # a copy of the very same file elsewhere is the same scene
    copy = tmp_path / "c"
    copy.mkdir()
    (copy / "s.tif").write_bytes(orig.read_bytes())
    r = geors("tiles", copy / "s.tif", "-o", out, "--tile", "256", "--overlap", "64", "--resume")
    assert r.exit_code == 0, r.output


class KeyedStage:
    """A stage whose provenance the test sets, counting how often it is asked for it."""

    name = "keyed"
    layers = ("detections",)
    classes = ()
    skip_nodata = False

    def __init__(self, **info):
        self.info = info
        self.described = 0

    def prepare(self, scenes):
        pass

    def default_tiling(self):
        return 256, 64

    def describe(self):
        self.described += 1
        return dict(self.info)

    def tile_inputs(self, scene, tiles):
        return None

    def __call__(self, batch):
        return [TileResult(batch.scene.name, t.id, t.window, "done") for t in batch.tiles]


def cfg(**output):
    return PipelineConfig(detect=None, tiling=TilingConfig(256, 64), execution=ExecutionConfig(batch_size=2),
                          output=OutputConfig(**output))


def test_sam_checkpoint_content_is_a_resume_key_and_its_path_is_not(tmp_path):
    # regression: mask_checkpoint_sha256 was not compared, so another checkpoint of the same architecture
    # (same mask_method) resumed a run
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    sam = {"mask_method": "sam_vit_b", "mask_checkpoint": "/a/sam.pth", "mask_checkpoint_sha256": "aa"}
    process_scenes([scene], out, KeyedStage(**sam), cfg())
    drop_ledger_rows(out, 2)
    with pytest.raises(OutputError, match=r"--sam \(the SAM checkpoint's content\): was 'aa', now 'bb'"):
        process_scenes([scene], out, KeyedStage(**{**sam, "mask_checkpoint_sha256": "bb"}), cfg(resume=True))
    # the same checkpoint found elsewhere: the same results
    s = process_scenes([scene], out, KeyedStage(**{**sam, "mask_checkpoint": "/b/sam.pth"}), cfg(resume=True))
    assert s.processed == 2


def test_a_key_recorded_on_one_side_only_is_a_difference(tmp_path):
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    process_scenes([scene], out, KeyedStage(model="m"), cfg())
    drop_ledger_rows(out, 2)
    with pytest.raises(OutputError, match="refine: was not recorded, now True"):
        process_scenes([scene], out, KeyedStage(model="m", refine=True), cfg(resume=True))
    with pytest.raises(OutputError, match="--model: was 'm', now not set"):
        process_scenes([scene], out, KeyedStage(), cfg(resume=True))


def test_describe_runs_once_per_run(tmp_path):
    # regression: describe() ran twice per run (result key, run record); a SAM stage hashes its 2.4 GiB
    # checkpoint each time
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 300, 300)
    stage = KeyedStage(model="m")
    process_scenes([scene], tmp_path / "o.gpkg", stage, cfg())
    assert stage.described == 1


def test_overwrite_with_an_unreachable_scheduler_keeps_the_old_rows(tmp_path):
    # regression: --overwrite deleted the scene's rows, then the executor failed to reach the scheduler:
    # exit 2 with the scene's results gone
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "t.gpkg"
    assert geors("tiles", scene, "-o", out, "--tile", "256", "--overlap", "64").exit_code == 0
    before = n_rows(out, "tiles")
    assert before == 6
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = geors("tiles", scene, "-o", out, "--tile", "256", "--overlap", "64", "--overwrite",
              "--scheduler", f"tcp://127.0.0.1:{port}")
    assert r.exit_code == 2 and "--scheduler" in r.output, r.output
    assert n_rows(out, "tiles") == before
    runs = json.loads(json.dumps([r[0] for r in sqlite3.connect(out).execute("SELECT status FROM geors_runs")]))
    assert runs == ["finished"]  # no run row for the refused one


def test_an_output_fingerprinted_by_an_older_geors_is_not_resumed_blindly(tmp_path):
    # the 64 KiB fingerprint of older outputs cannot vouch for the raster: say so (not "another raster")
    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    out = tmp_path / "o.gpkg"
    process_scenes([scene], out, KeyedStage(model="m"), cfg())
    drop_ledger_rows(out, 2)
    con = sqlite3.connect(out)
    for fid, conf in con.execute("SELECT fid, config FROM geors_runs").fetchall():
        c = json.loads(conf)
        for sc in c["scenes"]:
            sc.pop("fingerprint_version")
        con.execute("UPDATE geors_runs SET config = ? WHERE fid = ?", (json.dumps(c), fid))
    con.commit()
    con.close()
    with pytest.raises(OutputError, match="recorded by an older geors"):
        process_scenes([scene], out, KeyedStage(model="m"), cfg(resume=True))


def test_another_layer_of_the_boxes_file_is_refused_by_name(tmp_path):
    # regression: BoxMasksStage.describe() had no layer, so `masks --layer b --resume` continued a run made
    # from layer a of the same file (the file's sha256 is the same: the boxes of two layers mixed in one output)
    import geopandas as gpd
    import shapely

    scene = scenes.rgb_uint8(tmp_path / "rgb.tif", 600, 400)
    boxes = tmp_path / "boxes.gpkg"
    x0, y0 = 404000.0, 3285000.0  # scenes.rgb_uint8's origin; 0.5 m pixels
    for name, dx in (("a", 20.0), ("b", 150.0)):
        polys = [shapely.box(x0 + dx + 30 * i, y0 - 60, x0 + dx + 30 * i + 10, y0 - 50) for i in range(3)]
        gpd.GeoDataFrame({"label": ["car"] * 3}, geometry=polys, crs="EPSG:32617").to_file(
            boxes, layer=name, driver="GPKG")
    out = tmp_path / "m.gpkg"
    common = ["--tile", "256", "--overlap", "64", "--sam", "box"]
    r = geors("masks", scene, "--boxes", boxes, "-o", out, "--layer", "a", *common)
    assert r.exit_code == 0, r.output
    drop_ledger_rows(out, 2)
    r = geors("masks", scene, "--boxes", boxes, "-o", out, "--layer", "b", *common, "--resume")
    assert r.exit_code == 2 and "--layer: was 'a', now 'b'" in r.output, r.output
    assert geors("masks", scene, "--boxes", boxes, "-o", out, "--layer", "a", *common, "--resume").exit_code == 0
