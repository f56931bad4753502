"""SAMRS label rasters: alignment with the scene, 255 outside, class ids, overwrite order, atomic writes."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from geors.errors import LabelError
from geors.samrs import UNLABELLED, read_class_map, write_label_raster
from tests.mask_scenes import DISCS, transform, write_disc_scene


@pytest.fixture(scope="module")
def scene_and_truth(tmp_path_factory):
    from geors.raster import open_scene

    path, truth = write_disc_scene(tmp_path_factory.mktemp("label") / "discs.tif")
    return open_scene(path), truth


def pixel_polys(boxes) -> list:
    t = transform()
    return [shapely.Polygon([t @ (x, y) for x, y in ((b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3]))])
            for b in boxes]


def write_boxes(path, boxes, classes, crs="EPSG:32633", to_crs=None, field="kind"):
    gdf = gpd.GeoDataFrame({field: classes}, geometry=pixel_polys(boxes), crs=crs)
    if to_crs:
        gdf = gdf.to_crs(to_crs)
    gdf.to_file(path)
    return path


def test_label_raster_aligned_with_scene_box_engine(scene_and_truth, tmp_path):
    scene, _ = scene_and_truth
    boxes = [(10, 20, 60, 50), (700, 500, 800, 580)]
    # boxes in WGS84: reprojected to the scene's UTM grid (they stay within a fraction of a pixel)
    vec = write_boxes(tmp_path / "b.geojson", boxes, ["car", "roof"], to_crs="EPSG:4326")
    out = tmp_path / "labels.tif"
    rep = write_label_raster(scene, vec, out, class_field="kind", engine="box", block=256)
    assert rep.classes == {"car": 0, "roof": 1} and rep.mask_method == "box" and rep.n_boxes == 2
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (scene.width, scene.height, 1)
        assert ds.transform == scene.transform and ds.crs == scene.crs
        assert ds.dtypes[0] == "uint8" and ds.nodata == UNLABELLED
        assert ds.block_shapes[0] == (256, 256) and ds.compression.name.upper() == "DEFLATE"
        assert json.loads(ds.tags()["geors_classes"]) == {"car": 0, "roof": 1}
        lab = ds.read(1)
    exp = np.full((scene.height, scene.width), UNLABELLED, np.uint8)
    exp[20:50, 10:60] = 0
    exp[500:580, 700:800] = 1
    # reprojection to/from WGS84 moves box edges by far less than half a pixel
    assert (lab == exp).all()
    assert rep.labelled_pixels == 30 * 50 + 80 * 100


def test_overwrite_order_and_instance_ids(scene_and_truth, tmp_path):
    scene, _ = scene_and_truth
    big, small = (100, 100, 300, 300), (150, 150, 180, 180)
    boxes = np.array([small, big], float)  # file order: small first
    inst = tmp_path / "inst.tif"
    out = tmp_path / "lab.tif"
    write_label_raster(scene, (boxes, ["7", "3"]), out, engine="box", instance_raster=inst)
    with rasterio.open(out) as ds, rasterio.open(inst) as di:
        lab, ids = ds.read(1), di.read(1)
        assert di.dtypes[0] == "uint32" and di.transform == scene.transform and di.nodata == 0
    # integer class values are used as ids; larger first -> the small box stays visible on top
    assert (lab[150:180, 150:180] == 7).all() and lab[120, 120] == 3 and lab[50, 50] == UNLABELLED
    # instance ids are the fids of the masks GeoPackage's instances (written in file order within a tile)
    assert (ids[150:180, 150:180] == 1).all() and ids[120, 120] == 2 and ids[50, 50] == 0
    import pyogrio

    df = pyogrio.read_dataframe(tmp_path / "lab.masks.gpkg", layer="instances", fid_as_index=True)
    assert sorted(df.index) == [1, 2] and df.loc[1, "class"] == "7"
    write_label_raster(scene, (boxes, ["7", "3"]), out, engine="box", order="smaller_first", overwrite=True)
    with rasterio.open(out) as ds:
        assert (ds.read(1)[100:300, 100:300] == 3).all()  # the big one painted last hides the small one
    write_label_raster(scene, (boxes[::-1], ["3", "7"]), out, engine="box", order="input", overwrite=True)
    with rasterio.open(out) as ds:
        assert (ds.read(1)[150:180, 150:180] == 7).all()


def test_window_by_window_equals_single_window(scene_and_truth, tmp_path):
    scene, _ = scene_and_truth
    boxes = np.array([[240, 240, 280, 290], [500, 10, 530, 30]], float)  # first crosses 256-px windows
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_label_raster(scene, (boxes, None), a, engine="box", block=256)
    write_label_raster(scene, (boxes, None), b, engine="box", block=1024, masks_path=tmp_path / "b.gpkg")
    with rasterio.open(a) as da, rasterio.open(b) as db:
        la, lb = da.read(1), db.read(1)
    assert (la == lb).all() and (la[240:290, 240:280] == 0).all() and (la != UNLABELLED).sum() == 40 * 50 + 30 * 20


def test_grabcut_labels_match_discs(scene_and_truth, tmp_path):
    from geors.config import MaskConfig, PipelineConfig, TilingConfig

    scene, truth = scene_and_truth
    boxes = np.array([[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in DISCS], float)
    out = tmp_path / "gc.tif"
    config = PipelineConfig(detect=None, masks=MaskConfig("grabcut", 0.0, "all"), tiling=TilingConfig(256, 32))
    rep = write_label_raster(scene, (boxes, ["tank"] * len(boxes)), out, config=config)
    with rasterio.open(out) as ds:
        lab = ds.read(1)
    t = np.any(truth, axis=0)
    p = lab == 0
    assert rep.mask_method == "grabcut" and (p & t).sum() / (p | t).sum() > 0.8
    assert set(np.unique(lab)) == {0, UNLABELLED}


def test_class_map_files_and_errors(scene_and_truth, tmp_path):
    scene, _ = scene_and_truth
    (tmp_path / "m.json").write_text(json.dumps({"car": 12, "roof": 40}))
    (tmp_path / "m.csv").write_text("name,id\ncar,12\nroof,40\n")
    assert read_class_map(tmp_path / "m.json") == read_class_map(tmp_path / "m.csv") == {"car": 12, "roof": 40}
    (tmp_path / "bad.json").write_text(json.dumps({"car": 255}))
    with pytest.raises(LabelError, match="outside 0..254"):
        read_class_map(tmp_path / "bad.json")
    vec = write_boxes(tmp_path / "b.gpkg", [(10, 10, 30, 30), (40, 40, 60, 60)], ["car", "roof"])
    out = tmp_path / "l.tif"
    rep = write_label_raster(scene, vec, out, class_field="kind", class_map=tmp_path / "m.csv", engine="box")
    with rasterio.open(out) as ds:
        lab = ds.read(1)
    assert rep.classes == {"car": 12, "roof": 40} and lab[20, 20] == 12 and lab[50, 50] == 40
    # an unknown class fails before anything replaces the existing output; no temp files remain
    before = out.read_bytes()
    with pytest.raises(LabelError, match="not in the class map"):
        write_label_raster(scene, vec, out, class_field="kind", class_map={"car": 1}, engine="box", overwrite=True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_label_cli(scene_and_truth, tmp_path):
    from click.testing import CliRunner

    from geors.cli.main import main

    scene, _ = scene_and_truth
    vec = write_boxes(tmp_path / "b.gpkg", [(10, 10, 30, 30)], ["car"])
    out = tmp_path / "cli.tif"
    r = CliRunner().invoke(main, ["label", str(scene.path), "--boxes", str(vec), "-o", str(out), "--sam", "box",
                                  "--class-field", "kind", "--instances", str(tmp_path / "i.tif")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["extra"]["label"]["classes"] == {"car": 0}
    with rasterio.open(out) as ds:
        assert ds.read(1)[20, 20] == 0
    r = CliRunner().invoke(main, ["label", str(scene.path), "--boxes", str(tmp_path / "none.gpkg"), "-o", str(out)])
    assert r.exit_code == 2 and "exists" in r.output  # an existing label raster is never replaced silently
    r = CliRunner().invoke(main, ["label", str(scene.path), "--boxes", str(tmp_path / "none.gpkg"),
                                  "-o", str(tmp_path / "new.tif")])
    assert r.exit_code == 2 and "not found" in r.output


def test_label_never_replaces_its_input_and_resumes(scene_and_truth, tmp_path):
    """Regression: `geors label SCENE -o SCENE` replaced the input scene by the label raster."""
    import shutil

    from click.testing import CliRunner

    from geors.cli.main import main

    scene, _ = scene_and_truth
    copy = tmp_path / "scene.tif"
    shutil.copy(scene.path, copy)
    before = copy.read_bytes()
    vec = write_boxes(tmp_path / "b.gpkg", [(10, 10, 30, 30)], ["car"])
    for extra in ([], ["--overwrite"]):
        r = CliRunner().invoke(main, ["label", str(copy), "--boxes", str(vec), "-o", str(copy), "--sam", "box",
                                      *extra])
        assert r.exit_code == 2 and "input" in r.output, r.output
        assert copy.read_bytes() == before
    out = tmp_path / "l.tif"
    args = ["label", str(copy), "--boxes", str(vec), "-o", str(out), "--sam", "box", "--tile", "256"]
    assert CliRunner().invoke(main, args).exit_code == 0
    # resuming continues the masks GeoPackage and rewrites the derived raster
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped_resume"] > 0


def test_label_rasters_get_a_normal_files_mode(scene_and_truth, tmp_path):
    """Issue 26.6: label and instance rasters were created 0600 (mkstemp) while GeoPackages are 0644."""
    import os
    import stat

    scene, _ = scene_and_truth
    vec = write_boxes(tmp_path / "b.geojson", [(10, 20, 60, 50)], ["car"])
    old = os.umask(0o022)
    try:
        write_label_raster(scene, vec, tmp_path / "l.tif", class_field="kind", engine="box", block=256,
                           instance_raster=tmp_path / "i.tif")
    finally:
        os.umask(old)
    for name in ("l.tif", "i.tif"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
