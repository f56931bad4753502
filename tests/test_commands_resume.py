"""`geors masks`, `geors label` and `geors tiles` run through the pipeline: killed (SIGKILL between
batches, a deterministic fault point) and resumed, they give exactly what an uninterrupted run gives."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from tests.mask_scenes import DISCS, transform, write_disc_scene


@pytest.fixture(scope="module")
def disc_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    scene, _ = write_disc_scene(d / "discs.tif")
    t = transform()
    polys = [shapely.box(*(t @ (cx - r, cy + r)), *(t @ (cx + r, cy - r))) for cx, cy, r in DISCS]
    boxes = d / "boxes.gpkg"
    gpd.GeoDataFrame({"kind": ["tank"] * len(polys)}, geometry=polys, crs="EPSG:32633").to_file(boxes)
    return scene, boxes


def geors(args, fault=None):
    env = dict(os.environ)
    env.pop("GEORS_FAULT", None)
    if fault:
        env.update(GEORS_FAULT=fault, GEORS_FAULT_SIGNAL="SIGKILL")
    return subprocess.run([sys.executable, "-m", "geors", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


def rows(path, layer, fields):
    df = pyogrio.read_dataframe(path, layer=layer)
    return sorted((*(df[f].iloc[i] for f in fields), df.geometry.iloc[i].wkb_hex) for i in range(len(df)))


def ledger(path):
    con = sqlite3.connect(path)
    try:
        return sorted(con.execute("SELECT scene, tile_id, status FROM geors_tiles").fetchall())
    finally:
        con.close()


@pytest.mark.parametrize("command", ["masks", "tiles"])
def test_killed_command_resumes_to_the_clean_result(disc_inputs, tmp_path, command):
    scene, boxes = disc_inputs
    # tiles runs no model, so it has no --batch-size: its default 2 tiles per batch still give 8 batches here
    extra = ["--boxes", boxes, "--sam", "box", "--batch-size", "1"] if command == "masks" else []
    layer, fields = ("instances", ["class", "tile_id"]) if command == "masks" else ("tiles", ["tile_id"])
    base = [command, scene, *extra, "--tile", "256", "--overlap", "64"]
    clean = tmp_path / "clean.gpkg"
    assert geors([*base, "-o", clean]).returncode == 0
    out = tmp_path / "o.gpkg"
    r = geors([*base, "-o", out], fault="batch:2")
    assert r.returncode == -9  # killed between batches
    assert 0 < len(ledger(out)) < len(ledger(clean))
    r = geors([*base, "-o", out, "--resume"])
    assert r.returncode == 0, r.stderr
    assert rows(out, layer, fields) == rows(clean, layer, fields)
    assert ledger(out) == ledger(clean)
    con = sqlite3.connect(out)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    statuses = [s for (s,) in con.execute("SELECT status FROM geors_runs ORDER BY started")]
    con.close()
    assert statuses == ["interrupted", "finished"]


def test_killed_label_resumes_to_the_clean_raster(disc_inputs, tmp_path):
    scene, boxes = disc_inputs
    base = ["label", scene, "--boxes", boxes, "--sam", "box", "--tile", "256", "--overlap", "64",
            "--batch-size", "1"]
    assert geors([*base, "-o", tmp_path / "clean.tif"]).returncode == 0
    out = tmp_path / "l.tif"
    assert geors([*base, "-o", out], fault="batch:2").returncode == -9
    assert not out.exists()  # the raster is only written (atomically) once the masks are complete
    r = geors([*base, "-o", out, "--resume"])
    assert r.returncode == 0, r.stderr
    with rasterio.open(out) as a, rasterio.open(tmp_path / "clean.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_the_same_scene_started_twice_at_once_is_written_once(disc_inputs, tmp_path):
    """Two runs of the same scene into the same new output, started together: one writes, the other is refused
    (exit 2) once it holds the creation lock, instead of doubling every feature."""
    scene, boxes = disc_inputs
    out = tmp_path / "o.gpkg"
    args = [sys.executable, "-m", "geors", "masks", str(scene), "--boxes", str(boxes), "--sam", "box",
            "--tile", "256", "--overlap", "64", "-o", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "already holds results" in refused or "right now" in refused
    assert len(pyogrio.read_dataframe(out, layer="instances")) == len(DISCS)
