import sqlite3

import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.windows import Window

from geors.errors import OutputError
from geors.results import Detection, Instance, TileResult
from geors.vector import GeoPackageWriter, areas_m2, pixel_box_to_polygon

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
    sq = shapely.box(0, 0, 10, 10)
    assert areas_m2([sq], CRS.from_epsg(32617))[0] == pytest.approx(100)
    deg = shapely.box(10, 0, 10.001, 0.001)  # ~111 m x ~111 m at the equator
    assert areas_m2([deg], CRS.from_epsg(4326))[0] == pytest.approx(111.32 * 110.57, rel=0.01)
    assert np.all(areas_m2([], CRS.from_epsg(4326)) == 0)
