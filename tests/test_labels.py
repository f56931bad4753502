"""Labels from GIS vectors, VOC XML and CSV, mapped to scene pixels; bad input raises LabelError."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geors.errors import LabelError
from geors.io.box_labels import read_labels
from geors.raster import open_scene
from geors.tiling import TileGrid
from geors.train.scene_tiles import tiles_with_labels

# Scene: 200 x 100 px, EPSG:32617, 0.5 m pixels, top-left at (500000, 4500000).
ORIGIN_X, ORIGIN_Y, RES = 500_000.0, 4_500_000.0, 0.5
W, H = 200, 100


@pytest.fixture()
def scene_path(tmp_path):
    path = tmp_path / "scene.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, H, W), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=3, dtype="uint8",
                       crs=CRS.from_epsg(32617), transform=Affine(RES, 0, ORIGIN_X, 0, -RES, ORIGIN_Y)) as ds:
        ds.write(data)
    return path


@pytest.fixture()
def scene(scene_path):
    return open_scene(scene_path)


def px_to_utm(col, row):
    return ORIGIN_X + col * RES, ORIGIN_Y - row * RES


def utm_box(xmin, ymin, xmax, ymax):
    """Pixel box -> shapely polygon in EPSG:32617."""
    from shapely.geometry import box

    x0, y1 = px_to_utm(xmin, ymin)
    x1, y0 = px_to_utm(xmax, ymax)
    return box(x0, y0, x1, y1)


PIXEL_BOXES = np.array([[10, 20, 30, 40], [100, 5, 150, 60], [170, 70, 190, 95]], dtype=float)


def write_vector(path, geoms, crs, **fields):
    import geopandas as gpd

    gpd.GeoDataFrame(fields, geometry=list(geoms), crs=crs).to_file(path)


def test_gpkg_in_wgs84_is_reprojected_to_scene_pixels(tmp_path, scene):
    import geopandas as gpd

    utm = gpd.GeoSeries([utm_box(*b) for b in PIXEL_BOXES], crs=32617)
    path = tmp_path / "boxes.gpkg"
    write_vector(path, utm.to_crs(4326), 4326, species=["oak", "pine", "oak"])
    labels = read_labels(path, scene, class_field="species")
    # Reprojection UTM -> WGS84 -> UTM turns the box slightly; the bbox stays within 1 px.
    np.testing.assert_allclose(labels.boxes, PIXEL_BOXES, atol=1.0)
    assert labels.classes == ("oak", "pine")
    assert labels.class_names == ("oak", "pine", "oak")
    np.testing.assert_array_equal(labels.class_ids, [0, 1, 0])
    assert labels.source == path


def test_polygons_become_their_bounding_box_and_class_field_is_found(tmp_path, scene):
    from shapely.geometry import Polygon

    # A diamond inside pixel box (10, 20, 30, 40).
    pts = [px_to_utm(20, 20), px_to_utm(30, 30), px_to_utm(20, 40), px_to_utm(10, 30)]
    path = tmp_path / "poly.geojson"
    write_vector(path, [Polygon(pts)], 32617, Label=["tree"])
    labels = read_labels(path, scene)
    np.testing.assert_allclose(labels.boxes, [[10, 20, 30, 40]], atol=1e-6)
    assert labels.classes == ("tree",)


def test_shapefile_without_class_field_gives_one_class(tmp_path, scene):
    path = tmp_path / "boxes.shp"
    write_vector(path, [utm_box(*b) for b in PIXEL_BOXES], 32617, id=[1, 2, 3])
    labels = read_labels(path, scene)
    np.testing.assert_allclose(labels.boxes, PIXEL_BOXES, atol=1e-6)
    assert labels.classes == ("object",)


def test_class_map_fixes_ids_and_rejects_unknown(tmp_path, scene):
    path = tmp_path / "b.gpkg"
    write_vector(path, [utm_box(*b) for b in PIXEL_BOXES], 32617, **{"class": ["b", "a", "b"]})
    labels = read_labels(path, scene, class_map=["b", "a", "c"])
    np.testing.assert_array_equal(labels.class_ids, [0, 1, 0])
    assert labels.classes == ("b", "a", "c")
    with pytest.raises(LabelError, match="b.gpkg"):
        read_labels(path, scene, class_map={"a": 0})


def test_box_partly_outside_is_clipped_or_dropped(tmp_path, scene):
    boxes = [[-10, 10, 30, 30],   # 75% inside -> clipped to x >= 0
             [190, 10, 230, 30],  # 25% inside -> dropped
             [50, 50, 60, 60]]
    path = tmp_path / "b.gpkg"
    write_vector(path, [utm_box(*b) for b in boxes], 32617)
    labels = read_labels(path, scene)
    np.testing.assert_allclose(labels.boxes, [[0, 10, 30, 30], [50, 50, 60, 60]], atol=1e-6)


def test_voc_xml(tmp_path, scene):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in zip(["Tree", "Tree", "Shrub"], PIXEL_BOXES.astype(int), strict=True)
    )
    path = tmp_path / "scene.xml"
    path.write_text(f"<annotation><filename>scene.tif</filename>{objs}</annotation>")
    labels = read_labels(path, scene)
    np.testing.assert_array_equal(labels.boxes, PIXEL_BOXES)
    assert labels.class_names == ("Tree", "Tree", "Shrub")
    assert labels.classes == ("Shrub", "Tree")


def test_csv_keeps_rows_of_this_scene(tmp_path, scene):
    rows = ["image_path,xmin,ymin,xmax,ymax,label"]
    rows += [f"scene.png,{b[0]},{b[1]},{b[2]},{b[3]},Tree" for b in PIXEL_BOXES.astype(int)]
    rows += ["other.tif,1,1,5,5,Tree"]
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    labels = read_labels(path, scene)
    np.testing.assert_array_equal(labels.boxes, PIXEL_BOXES)
    assert labels.classes == ("Tree",)


def test_real_neon_voc_and_csv_agree():
    from pathlib import Path

    root = Path.home() / ".cache/geors/samples/neon"
    if not (root / "OSBS_029.tif").exists():
        pytest.skip("NEON sample not downloaded")
    scene = open_scene(root / "OSBS_029.tif", allow_ungeoreferenced=True)
    a = read_labels(root / "OSBS_029.xml", scene)
    b = read_labels(root / "OSBS_029.csv", scene)
    assert len(a) > 10
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_tiles_with_labels_assigns_clipped_local_boxes(scene):
    grid = TileGrid(scene, size=64, overlap=16)  # cols start 0,48,96,136; rows 0,36
    from geors.io.box_labels import LabelSet

    boxes = np.array([[40, 10, 60, 20],  # whole in tile c0 (0..64); 48..60 = 60% in c1 (48..112)
                      [5, 5, 10, 10]], dtype=float)
    ls = LabelSet(boxes=boxes, class_names=("a", "b"), class_ids=np.array([0, 1]), classes=("a", "b"),
                  source=None)
    out = tiles_with_labels(ls, grid)
    assert set(out) == {"r0_c0", "r0_c1"}
    b0, c0 = out["r0_c0"]
    np.testing.assert_array_equal(b0, [[40, 10, 60, 20], [5, 5, 10, 10]])
    np.testing.assert_array_equal(c0, [0, 1])
    b1, c1 = out["r0_c1"]
    np.testing.assert_array_equal(b1, [[0, 10, 12, 20]])  # 48..60 -> 12/20 = 60% visible
    np.testing.assert_array_equal(c1, [0])
    # A box only 20% visible in a tile (60..64 of 60..80) is not given to it.
    ls2 = LabelSet(boxes=np.array([[60, 0, 80, 10.0]]), class_names=("a",), class_ids=np.array([0]),
                   classes=("a",), source=None)
    assert set(tiles_with_labels(ls2, grid)) == {"r0_c1"}
    full = tiles_with_labels(ls, grid, include_empty=True)
    assert len(full) == len(grid) and len(full["r1_c3"][0]) == 0


def test_tiles_with_labels_matches_bruteforce(scene):
    rng = np.random.default_rng(1)
    xy = rng.uniform(-10, 200, (300, 2))
    wh = rng.uniform(1, 40, (300, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    from geors.io.box_labels import LabelSet, clip_boxes

    ls = LabelSet(boxes=boxes, class_names=("a",) * 300, class_ids=np.arange(300), classes=("a",), source=None)
    grid = TileGrid(scene, size=48, overlap=8)
    out = tiles_with_labels(ls, grid)
    for tile in grid:
        w = tile.window
        x0, y0 = w.col_off, w.row_off
        expect, keep = clip_boxes(boxes, (x0, y0, x0 + w.width, y0 + w.height))
        got = out.get(tile.id, (np.zeros((0, 4)), np.zeros(0, dtype=int)))
        np.testing.assert_allclose(got[0], expect - [x0, y0, x0, y0])
        np.testing.assert_array_equal(got[1], np.flatnonzero(keep))


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path, scene):
    with pytest.raises(LabelError, match="nope.gpkg.*not found"):
        read_labels(tmp_path / "nope.gpkg", scene)


def test_empty_vector_file(tmp_path, scene):
    import geopandas as gpd

    path = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"class": []}, geometry=[], crs=32617).to_file(path)
    with pytest.raises(LabelError, match="empty.gpkg.*no labels"):
        read_labels(path, scene)


def test_empty_csv_and_voc(tmp_path, scene):
    csv = tmp_path / "empty.csv"
    csv.write_text("image_path,xmin,ymin,xmax,ymax,label\n")
    with pytest.raises(LabelError, match="empty.csv"):
        read_labels(csv, scene)
    xml = tmp_path / "empty.xml"
    xml.write_text("<annotation><filename>scene.tif</filename></annotation>")
    with pytest.raises(LabelError, match="empty.xml.*no labels"):
        read_labels(xml, scene)


def test_labels_outside_scene_suggest_crs(tmp_path, scene):
    from shapely.geometry import box

    # Coordinates in EPSG:32617 numbers but declared as EPSG:32618: far outside.
    path = tmp_path / "wrongcrs.gpkg"
    write_vector(path, [utm_box(*b) for b in PIXEL_BOXES], 32618)
    with pytest.raises(LabelError, match=r"wrongcrs.gpkg: all 3 labels fall outside.*check the CRS"):
        read_labels(path, scene)
    path2 = tmp_path / "far.geojson"
    write_vector(path2, [box(0, 0, 1, 1)], 32617)
    with pytest.raises(LabelError, match="far.geojson: all 1 labels"):
        read_labels(path2, scene)


def test_unknown_class_field_lists_fields(tmp_path, scene):
    path = tmp_path / "b.gpkg"
    write_vector(path, [utm_box(*b) for b in PIXEL_BOXES], 32617, species=["a", "b", "c"], height=[1, 2, 3])
    with pytest.raises(LabelError, match=r"b.gpkg: no field 'kind'; available fields: species, height"):
        read_labels(path, scene, class_field="kind")


def test_layer_without_crs(tmp_path, scene):
    path = tmp_path / "nocrs.gpkg"
    write_vector(path, [utm_box(*b) for b in PIXEL_BOXES], None)
    with pytest.raises(LabelError, match="nocrs.gpkg: the layer has no CRS"):
        read_labels(path, scene)


def test_coordinates_invalid_in_declared_crs(tmp_path, scene):
    # GeoJSON is always read as WGS84: UTM metres there cannot be transformed.
    path = tmp_path / "utm_as_wgs84.geojson"
    write_vector(path, [utm_box(*b) for b in PIXEL_BOXES], None)
    with pytest.raises(LabelError, match="utm_as_wgs84.geojson: .*cannot be transformed"):
        read_labels(path, scene)


def test_unreadable_file(tmp_path, scene):
    path = tmp_path / "garbage.gpkg"
    path.write_bytes(b"\x00not a geopackage" * 10)
    with pytest.raises(LabelError, match="garbage.gpkg: cannot read"):
        read_labels(path, scene)
    bad_xml = tmp_path / "bad.xml"
    bad_xml.write_text("<annotation><object>")
    with pytest.raises(LabelError, match="bad.xml"):
        read_labels(bad_xml, scene)


def test_inverted_box_in_csv(tmp_path, scene):
    path = tmp_path / "inv.csv"
    path.write_text("image_path,xmin,ymin,xmax,ymax,label\nscene.tif,30,20,10,40,Tree\n")
    with pytest.raises(LabelError, match="inv.csv: 1 boxes have xmax <= xmin"):
        read_labels(path, scene)


def test_training_crops_and_label_clipping_share_one_rule():
    """train/crops cuts boxes with io.box_labels.clip_boxes: the same boxes survive a window at any offset,
    an inverted box (xmax < xmin and ymax < ymin: positive 'area') included, which clip_boxes used to keep."""
    from geors.io.box_labels import MIN_VISIBLE, clip_boxes
    from geors.train.crops import TrainTile, _crop

    rng = np.random.default_rng(3)
    xy = rng.uniform(-40, 140, (200, 2))
    wh = rng.uniform(1, 60, (200, 2))
    boxes = np.concatenate([np.hstack([xy, xy + wh]), [[60.0, 60.0, 50.0, 50.0]]])
    tile = TrainTile(np.zeros((3, 100, 100), np.float32), boxes, np.arange(len(boxes)), "t")
    for x0, y0 in [(0, 0), (20, -10), (-30, 45)]:
        _, cut, ids = _crop(tile, x0, y0, 64)
        shifted = boxes - [x0, y0, x0, y0]
        clipped, keep = clip_boxes(shifted, (0, 0, 64, 64), MIN_VISIBLE)
        assert np.array_equal(ids, np.flatnonzero(keep)) and np.allclose(cut, clipped)
        assert len(boxes) - 1 not in ids and 0 < len(ids) < len(boxes)
    assert not clip_boxes([[60.0, 60.0, 50.0, 50.0]], (0, 0, 100, 100))[1].any()
