"""Raster layers that are not files (issue 28, "Any raster layer"): exported for an extent at a resolution to a
temporary GeoTIFF, then processed by the same CLI path.

The decision (file or export) and the export grid are pure functions (qgis_plugin/geors_qgis/raster_source.py),
tested here without QGIS. The ``qgis`` tests run tests/qgis_layers_harness.py in QGIS's Python (as
tests/test_qgis_plugin.py does) on layers the plugin refused or could not hand to the CLI before: a GDAL dataset
in /vsimem/ (passed to the CLI as '/vsimem/...', which its process cannot open), the raster calculator's virtual
raster and XYZ tiles (both refused as 'not a raster file on disk'). Every qgis test runs with a temp folder and
an output whose paths have spaces and non-ASCII letters, and checks that no export is left behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qgis_plugin"))

from geors_qgis.raster_source import (  # noqa: E402
    ExportError,
    check_size,
    choose_extent,
    choose_resolution,
    export_file_name,
    export_grid,
    local_raster_file,
)

HARNESS = Path(__file__).with_name("qgis_layers_harness.py")
BOUNDS = (404000.0, 3284948.8, 404076.8, 3285000.0)  # crowns_scene(768 x 512 px at 0.1 m)


# --- the decision and the grid, without QGIS ----------------------------------------------------------------


def test_only_a_plain_local_file_of_the_gdal_provider_goes_to_the_cli_as_it_is(tmp_path):
    tif = tmp_path / "ortho 2024 ü 木.tif"
    tif.write_bytes(b"")
    assert local_raster_file("gdal", str(tif)) == str(tif)
    assert local_raster_file("gdal", str(tmp_path / "moved.tif")) is None  # no file: not handed to the CLI
    always = {"is_file": lambda p: True}
    assert local_raster_file("gdal", r"C:\data\ortho.tif", **always) == r"C:\data\ortho.tif"  # Windows drive
    assert local_raster_file("gdal", "D:/data/mosaic.vrt", **always) == "D:/data/mosaic.vrt"
    for provider, source in [
        ("wms", "type=xyz&url=https://tile.openstreetmap.org/{z}/{x}/{y}.png&zmax=19&zmin=0"),
        ("virtualraster", "?crs=EPSG:32617&extent=0,0,1,1&width=1&height=1&formula=%22a@1%22"),
        ("postgresraster", "dbname='gis' table=\"public\".\"ortho\" (rast)"),
        ("wcs", "url=https://example.org/wcs&identifier=dem"),
        ("gdal", "/vsimem/scene.tif"),  # QGIS's memory: the CLI's process cannot see it (was passed on)
        ("gdal", "/vsicurl/https://example.org/cog.tif"),
        ("gdal", "/vsizip//data/scenes.zip/a.tif"),
        ("gdal", "/data/ortho.tif|option:OVERVIEW_LEVEL=1"),  # open options change what is read
        ("gdal", "GPKG:/data/rasters.gpkg:ortho"),
        ("gdal", 'NETCDF:"/data/x.nc":band'),
        ("gdal", "https://example.org/cog.tif"),
        ("gdal", ""),
    ]:
        assert local_raster_file(provider, source, **always) is None, (provider, source)


def test_a_world_wide_layer_needs_an_extent_and_a_given_one_is_cut_to_the_layer():
    with pytest.raises(ExportError, match=r"covers the whole world.*EXTENT"):
        choose_extent(None, None, "OpenStreetMap")
    assert choose_extent(None, BOUNDS, "l") == BOUNDS
    assert choose_extent((403990.0, 3284990.0, 404010.0, 3285100.0), BOUNDS, "l") == \
        (404000.0, 3284990.0, 404010.0, 3285000.0)
    assert choose_extent((1.0, 2.0, 3.0, 4.0), None, "xyz") == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ExportError, match="does not overlap the layer 'l'"):
        choose_extent((0.0, 0.0, 1.0, 1.0), BOUNDS, "l")


def test_resolution_given_native_or_the_finest_zoom_level_else_required():
    assert choose_resolution(0.25, (0.1, 0.1), [], "l")[0] == (0.25, 0.25)
    res, why = choose_resolution(None, (0.1, 0.2), [], "l")
    assert res == (0.1, 0.2) and "own pixel size" in why
    res, why = choose_resolution(None, None, [156543.03, 0.2986, 0.5972], "osm")
    assert res == (0.2986, 0.2986) and "finest zoom level" in why
    with pytest.raises(ExportError, match=r"no pixel size of its own.*RESOLUTION"):
        choose_resolution(None, None, [], "a WMS")
    with pytest.raises(ExportError, match="RESOLUTION must be > 0"):
        choose_resolution(-1.0, (0.1, 0.1), [], "l")


def test_export_grid_keeps_the_layers_pixels():
    # the whole layer at its own pixel size: 768 x 512, although 76.8 / 0.1 is 767.9999999999 in floats
    g = export_grid(BOUNDS, (0.1, 0.1), (BOUNDS[0], BOUNDS[3]))
    assert (g.width, g.height) == (768, 512)
    assert (g.xmin, g.ymax) == (BOUNDS[0], BOUNDS[3]) and g.xmax == pytest.approx(BOUNDS[2])
    # a part of it: snapped outwards onto the layer's grid (no resampling, no half pixels)
    g = export_grid((404010.05, 3284960.0, 404050.0, 3284990.0), (0.2, 0.2), (BOUNDS[0], BOUNDS[3]))
    assert (g.xmin, g.width, g.height) == (pytest.approx(404010.0), 200, 150)
    assert g.ymin == pytest.approx(3284960.0) and g.ymax == pytest.approx(3284990.0)
    # no grid of its own: from the extent's top-left corner, whole pixels
    g = export_grid((0.0, 0.0, 10.05, 5.0), (1.0, 1.0))
    assert (g.xmin, g.ymax, g.width, g.height, g.xmax, g.ymin) == (0.0, 5.0, 11, 5, 11.0, 0.0)
    assert g.size_text(3, 1) == "11 x 5 px (0.00 MP), 3 band(s), 0.0 MB uncompressed"


def test_a_huge_export_is_refused_with_what_to_change():
    g = export_grid((0.0, 0.0, 100_000.0, 100_000.0), (0.3, 0.3))
    with pytest.raises(ExportError, match=r"smaller EXTENT or a coarser RESOLUTION"):
        check_size(g, "osm")
    check_size(export_grid((0.0, 0.0, 3000.0, 3000.0), (0.3, 0.3)), "osm")  # 100 MP: fine


def test_export_file_is_named_after_the_layer():
    assert export_file_name("Ортофото 2024 (copy)", set()) == "Ортофото_2024_copy.tif"
    assert export_file_name("a/b:c", set()) == "a_b_c.tif"
    assert export_file_name("...", set()) == "layer.tif"
    assert export_file_name("OSM", {"OSM.tif", "osm_2.tif"}) == "OSM_3.tif"


# --- in QGIS ----------------------------------------------------------------------------------------------


@pytest.fixture
def run_case(monkeypatch):
    """Runs one case of tests/qgis_layers_harness.py in QGIS's Python (test_qgis_plugin.harness pointed at this
    harness) with ``tmp`` as its temp folder; skips where QGIS is absent."""
    import test_qgis_plugin as T

    if T._qgis_missing():
        pytest.skip(T._qgis_missing())
    monkeypatch.setattr(T, "HARNESS", HARNESS)

    def run(case: str, *args: str, tmp: Path) -> dict:
        return T.harness(case, *args, env={"TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"})

    return run


@pytest.fixture
def odd_tmp(tmp_path) -> Path:
    """A temp folder (TMPDIR of QGIS) whose path has spaces and letters outside ASCII."""
    d = tmp_path / "temp dir ü 木"
    d.mkdir()
    return d


@pytest.fixture
def scene(tmp_path) -> Path:
    from test_qgis_plugin import crowns_scene

    return crowns_scene(tmp_path / "crowns.tif", 768, 512)


def _exported(log: list[str]) -> list[str]:
    return [ln for ln in log if ln.startswith("info: exported ")]


@pytest.mark.qgis
def test_in_memory_layer_is_exported_for_the_extent_at_the_resolution(odd_tmp, scene, run_case):
    """Regression: a /vsimem/ layer was handed to the CLI as '/vsimem/...', which its process cannot open."""
    out = odd_tmp / "out ü.gpkg"
    res = run_case("vsimem", str(scene), str(out), "Ортофото 2024 (copy)",
               "404010.05,404050.0,3284960.0,3284990.0 [EPSG:32617]", "0.2", "0", tmp=odd_tmp)
    assert res["layer_valid"] and res["message"] is None, res
    tiles = res["tiles"]
    assert tiles["crs"] == "EPSG:32617" and tiles["count"] == 1
    assert tiles["extent"] == pytest.approx([404010.0, 3284960.0, 404050.0, 3284990.0])  # snapped, 200 x 150
    (line,) = _exported(res["log"])
    assert "200 x 150 px (0.03 MP), 3 band(s)" in line and " MB on disk, in " in line
    assert any("Ортофото_2024_copy.tif" in ln and ln.startswith("command: ") for ln in res["log"])
    assert res["exports_left"] == []  # the temporary GeoTIFF and its folder are gone


@pytest.mark.qgis
def test_virtual_raster_layer_is_exported_whole_at_its_own_pixel_size(odd_tmp, scene, run_case):
    """Regression: the raster calculator's virtual raster was refused ('not a raster file on disk')."""
    res = run_case("virtual", str(scene), str(odd_tmp / "virtual ü.gpkg"), tmp=odd_tmp)
    assert res["layer_valid"] and res["provider"] == "virtualraster" and res["message"] is None, res
    for name in ("tiles", "cores"):
        assert res[name]["crs"] == "EPSG:32617" and res[name]["count"] == 12  # as the file itself gives
        assert res[name]["extent"] == pytest.approx(list(BOUNDS))
    (line,) = _exported(res["log"])
    assert "768 x 512 px (0.39 MP), 1 band(s)" in line
    assert res["exports_left"] == []


@pytest.mark.qgis
def test_kept_export_holds_the_layers_pixels(odd_tmp, scene, run_case):
    """KEEP_EXPORT: the GeoTIFF stays, named after the layer, tiled and compressed, in the layer's CRS, with
    exactly the layer's pixels (no resampling at its own pixel size)."""
    res = run_case("vsimem", str(scene), str(odd_tmp / "kept.gpkg"), "kept ü", "", "", "1", tmp=odd_tmp)
    assert res["message"] is None and any("are kept (KEEP_EXPORT is set)" in ln for ln in res["log"])
    (folder,) = res["exports_left"]
    kept = Path(folder) / "kept_ü.tif"
    with rasterio.open(kept) as k, rasterio.open(scene) as s:
        assert k.crs == s.crs and k.transform.almost_equals(s.transform) and (k.width, k.height) == (768, 512)
        assert k.profile["tiled"] and k.profile["compress"] == "deflate"
        assert np.array_equal(k.read(), s.read())


@pytest.mark.qgis
def test_xyz_layer_needs_an_extent_and_is_exported_at_its_finest_zoom(odd_tmp, scene, run_case):
    """XYZ tiles served from a local folder (offline): without EXTENT a clear message (it covers the world);
    with the scene's extent given in another CRS (UTM), the export is in the layer's EPSG:3857 at zoom 20's
    pixel size. Regression: XYZ layers were refused."""
    extent = f"{BOUNDS[0]},{BOUNDS[2]},{BOUNDS[1]},{BOUNDS[3]} [EPSG:32617]"
    res = run_case("xyz", str(scene), str(odd_tmp / "web tiles"), "20", str(odd_tmp / "xyz ü.gpkg"), extent,
               tmp=odd_tmp)
    assert res["layer_valid"] and res["web_tiles"] > 0
    msg = res["without_extent"]["message"]
    assert "covers the whole world" in msg and "EXTENT" in msg and "Traceback" not in msg
    done = res["with_extent"]
    assert done["message"] is None, done
    assert done["tiles"]["crs"] == "EPSG:3857"
    x0, y0, x1, y1 = done["tiles"]["extent"]  # the UTM extent in web mercator: about 89 x 60 m
    assert -9127340 < x0 < -9127337 and 3463880 < y0 < 3463883 and -9127251 < x1 < -9127248
    assert any("finest zoom level" in ln for ln in done["log"])
    (line,) = _exported(done["log"])
    assert "4 band(s)" in line  # RGBA
    assert done["exports_left"] == []


@pytest.mark.qgis
def test_local_file_layer_goes_straight_to_the_cli(odd_tmp, scene, run_case):
    res = run_case("file", str(scene), str(odd_tmp / "file.gpkg"), tmp=odd_tmp)
    assert res["message"] is None and not _exported(res["log"])
    assert any(ln.startswith("command: ") and str(scene) in ln for ln in res["log"])
    assert any("is a raster file: geors reads it whole" in ln for ln in res["log"])  # EXTENT given, not used
    assert res["tiles"]["extent"] == pytest.approx(list(BOUNDS)) and res["exports_left"] == []


@pytest.mark.qgis
def test_a_re_export_gives_the_same_bytes(tmp_path, scene, run_case):
    """Two exports of one layer on one grid are byte-identical, so a run resumed from the dialog (which
    exports again, to the same file name) keeps the scene's --resume fingerprint."""
    res = run_case("export_twice", str(scene), str(tmp_path), tmp=tmp_path)
    assert res["size"] == [768, 512] and res["digests"][0] == res["digests"][1]


@pytest.mark.qgis
def test_a_cancelled_run_keeps_its_export_and_resumes_from_a_new_one(odd_tmp, scene, run_case):
    """Cancel while geors runs on an exported layer: the export stays (the resume command the message prints
    reads it); running the algorithm again with RESUME exports anew (same name, same bytes) and geors resumes
    the run instead of refusing another raster."""
    out = odd_tmp / "cancelled ü.gpkg"
    res = run_case("cancel_resume", str(scene), str(out), tmp=odd_tmp)
    (kept,) = res["kept"]
    assert "Cancelled" in res["message"] and "--resume" in res["message"] and kept in res["message"]
    assert (Path(kept) / "in_memory.tif").is_file()
    assert any("are kept (the run was cancelled" in ln for ln in res["log"])
    summary = res["summary"]
    assert summary["status"] == "finished" and summary["skipped_resume"] > 0
    assert summary["skipped_resume"] + summary["done"] == summary["tiles"] == 12
    assert res["exports_left"] == [kept]  # the resumed run's own export is removed


@pytest.mark.qgis
def test_a_cancelled_export_leaves_nothing(odd_tmp, scene, run_case):
    """Cancel during the export (before geors ran): the half-written GeoTIFF and its folder are removed and no
    output is made. Regression: the first version kept the exports of every cancelled run, half-written ones
    too."""
    res = run_case("cancel_export", str(scene), str(odd_tmp / "never.gpkg"), tmp=odd_tmp)
    assert res["message"] == "Cancelled while exporting the layer 'in memory'."
    assert res["exports_left"] == [] and not res["output_exists"]
    assert not any(ln.startswith("command: ") for ln in res["log"])


@pytest.mark.qgis
def test_an_export_is_not_named_like_a_scene_file_of_the_same_run(odd_tmp, tmp_path, run_case):
    """A local file 'small.tif' and a layer that is not a file named 'small' in one run: the export becomes
    'small_2.tif'. Regression: it was 'small.tif' too, and geors refused the run ('several scenes share the file
    name')."""
    from test_qgis_plugin import crowns_scene

    small = crowns_scene(tmp_path / "small.tif", 384, 256)
    res = run_case("mixed", str(small), str(odd_tmp / "mixed.gpkg"), tmp=odd_tmp)
    assert res["message"] is None, res["message"]
    assert res["summary"]["scenes"] == 2 and res["summary"]["status"] == "finished"
    assert any(ln.startswith("command: ") and "small_2.tif" in ln for ln in res["log"])
    assert res["exports_left"] == []
