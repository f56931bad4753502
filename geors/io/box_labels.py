"""Labels for every command: boxes from GIS vectors, Pascal VOC XML or CSV, in scene pixels.

Used by training, ``geors masks``/``geors label`` (boxes as prompts) and evaluation.

Supported inputs:

- Any vector file OGR reads (GeoPackage, GeoJSON, Shapefile, ...), boxes or
  polygons in any CRS. Geometries are reprojected to the scene CRS, mapped to
  scene pixels with the scene's inverse geotransform, and replaced by their
  bounding box. A line that closes on itself is read as the polygon it rings
  (with a warning naming the features); points and open lines have no area and
  are left out (listed in ``LabelSet.dropped``; a file of only those is refused). The class comes from ``class_field``; without it a field named
  ``class`` or ``label`` is used when present (so a geors ``detections`` layer
  reads back as labels), otherwise every box is of class ``"object"``.
- Pascal VOC XML (``<object><name>`` + ``<bndbox>``) and CSV with columns
  ``image_path,xmin,ymin,xmax,ymax,label`` (DeepForest style), both in pixel
  coordinates of the image, taken as given (0-based, as DeepForest writes
  them; geors does not apply VOC's historical 1-based offset). A CSV may list
  several images: rows are kept whose ``image_path`` file name (or its stem,
  so ``OSBS_029.png`` matches ``OSBS_029.tif``) matches the scene.

Boxes are ``(xmin, ymin, xmax, ymax)`` floats in scene pixel coordinates:
x = column, y = row, origin at the top-left corner of the top-left pixel.

A box that lies partly outside the scene (or a tile) is clipped to it and kept
only when at least half of its area is visible (``MIN_VISIBLE``): a detector
cannot learn from a sliver, and a tile holding less than half of an object is
not asked to find it. Boxes given as prompts (``geors masks``, ``geors label``)
are read with ``min_visible=0``: every box that overlaps the scene is clipped
and outlined. Every box keeps its id in its file (``LabelSet.fids``: the OGR
feature id, the VOC ``<object>`` number or the CSV data row number, from 1) and
its attributes (``LabelSet.attributes``); boxes left out are listed with the
reason (``LabelSet.dropped``). Every problem a user can fix raises
:class:`geors.errors.LabelError` naming the file and what to do.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geors.crs import same_crs
from geors.errors import LabelError

__all__ = ["LabelSet", "MIN_VISIBLE", "read_labels", "as_labelset", "clip_boxes", "is_pixel_csv", "reproject_labels",
           "DEFAULT_CLASS_FIELDS", "closed_lines_as_polygons"]

log = logging.getLogger(__name__)

#: Minimum visible share of a box's area for it to be kept after clipping: the one rule for label
#: files, training crops (:mod:`geors.train.crops`), evaluation tiles and training tiles.
MIN_VISIBLE = 0.5

#: Field names used for the class when ``class_field`` is not given (case-insensitive).
DEFAULT_CLASS_FIELDS = ("class", "label")

#: Class of every box when the labels carry no class.
DEFAULT_CLASS = "object"

_PIXEL_CSV_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class LabelSet:
    """Boxes of one scene in scene pixel coordinates.

    Attributes:
        boxes: ``(N, 4)`` float64 ``(xmin, ymin, xmax, ymax)`` in scene pixels
            (x = column, y = row), clipped to the scene.
        class_names: per-box class name, length N.
        class_ids: ``(N,)`` int64 index of each box's class in ``classes``.
        classes: class names; ``classes[i]`` has id ``i``.
        source: the label file.
        fids: ``(N,)`` int64 id of each box in its file (OGR fid, VOC object or CSV row number), or None.
        attributes: per box, its attributes as JSON text (vector files and CSV), or None.
        dropped: ``(id, reason)`` of the boxes of the file left out for this scene.
    """

    boxes: np.ndarray
    class_names: tuple[str, ...]
    class_ids: np.ndarray
    classes: tuple[str, ...]
    source: Path
    fids: np.ndarray | None = None
    attributes: tuple[str | None, ...] | None = None
    dropped: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def sizes(self) -> np.ndarray:
        """``(N, 2)`` box widths and heights in pixels (for anchor k-means)."""
        return np.stack([self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1]], axis=1)

    def summary(self) -> dict:
        """Counts per class and box size statistics (pixels), JSON-ready."""
        sizes = self.sizes
        counts = {c: int((self.class_ids == i).sum()) for i, c in enumerate(self.classes)}
        side = np.sqrt(sizes.prod(axis=1)) if len(sizes) else np.zeros(0)
        return {
            "source": str(self.source),
            "n_boxes": len(self),
            "per_class": counts,
            "mean_size_px": float(side.mean()) if len(side) else None,
            "min_size_px": float(side.min()) if len(side) else None,
            "max_size_px": float(side.max()) if len(side) else None,
        }


def read_labels(
    path: str | os.PathLike,
    scene,
    class_field: str | None = None,
    class_map: Mapping[str, int] | Sequence[str] | None = None,
    layer: str | None = None,
    min_visible: float = MIN_VISIBLE,
    option: str | None = None,
) -> LabelSet:
    """Read boxes for ``scene`` from a vector file, Pascal VOC XML or CSV.

    Args:
        path: label file. ``.xml`` is read as Pascal VOC and ``.csv`` with
            ``xmin,ymin,xmax,ymax`` columns as DeepForest CSV (pixels); anything
            else through OGR (coordinates in the layer's CRS).
        scene: a :class:`geors.raster.Scene` (uses ``width``, ``height``,
            ``crs``, ``transform``, ``name``).
        class_field: attribute/column holding the class; default ``class`` or
            ``label`` when present (vector files), ``label`` (CSV).
        class_map: fixed classes, e.g. a model's: a sequence of names (id =
            position) or a mapping name -> id with ids ``0..K-1``. Labels of
            other classes are an error. Default: the sorted unique names.
        layer: layer of a multi-layer vector file (default: the first).
        min_visible: least share of a box's area inside the scene for it to be kept (clipped);
            0 keeps every box that overlaps the scene (prompts for masks).
        option: the command-line option or argument that named ``path`` (``--boxes``,
            ``--labels``, ``TRUTH``), named in the message when the file does not exist.

    Returns:
        The boxes inside the scene, in scene pixels.

    Raises:
        LabelError: missing/unreadable/empty file, unknown class field, layer
            without CRS or a CRS that cannot be transformed, classes outside
            ``class_map``, or no box inside the scene.
    """
    path = Path(path)
    if not path.exists():
        given = f" (given as {option})" if option else ""
        raise LabelError(f"{path}: label file not found{given}. Check the path.")
    if path.is_dir() and path.suffix.lower() != ".gdb":
        raise LabelError(f"{path}: is a directory; pass a label file (GeoPackage, GeoJSON, Shapefile, VOC XML or CSV).")
    suffix = path.suffix.lower()
    dropped: list[tuple[int, str]] = []
    if suffix == ".xml":
        boxes, names = _read_voc(path, scene)
        fids, attrs = np.arange(1, len(boxes) + 1, dtype=np.int64), None
    elif suffix == ".csv" and is_pixel_csv(path):
        boxes, names, fids, attrs = _read_pixel_csv(path, scene, class_field)
    else:
        boxes, names, fids, attrs, dropped = _read_vector(path, scene, class_field, layer)
    n_read = len(boxes)
    boxes, keep = clip_boxes(boxes, (0.0, 0.0, float(scene.width), float(scene.height)), min_visible)
    names = [n for n, k in zip(names, keep, strict=True) if k]
    reason = "outside the scene" if min_visible <= 0 else "outside the scene or less than half inside"
    dropped += [(int(f), reason) for f in fids[~keep]]
    fids = fids[keep]
    if attrs is not None:
        attrs = tuple(a for a, k in zip(attrs, keep, strict=True) if k)
    half = " or less than half inside" if min_visible > 0 else ""
    if len(boxes) == 0:
        raise LabelError(
            f"{path}: all {n_read} labels fall outside the scene bounds of {getattr(scene, 'name', scene)} "
            f"({scene.width} x {scene.height} px){half}; check the CRS of the labels and that they belong to "
            "this scene."
        )
    if len(boxes) < n_read:
        log.warning("%s: %d of %d labels are outside the scene%s; left out (ids %s)", path, n_read - len(boxes),
                    n_read, half, _ids_text([f for f, _ in dropped]))
    classes, ids = _contiguous_class_ids(path, names, class_map)
    return LabelSet(
        boxes=boxes,
        class_names=tuple(names),
        class_ids=ids,
        classes=classes,
        source=path,
        fids=fids,
        attributes=attrs,
        dropped=tuple(dropped),
    )


def _ids_text(ids: Sequence[int], n: int = 10) -> str:
    ids = list(ids)
    return ", ".join(str(i) for i in ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _attributes_json(df) -> tuple[str, ...]:
    """Each row's attributes as JSON text (values JSON cannot hold become strings; missing ones null)."""
    cols = [c for c in df.columns if c != "geometry"]
    return tuple(json.dumps({str(c): _json_value(v) for c, v in zip(cols, row, strict=True)}, default=str)
                 for row in df[cols].itertuples(index=False, name=None))


def _json_value(v):
    import pandas as pd

    if isinstance(v, np.generic):
        v = v.item()
    if v is None or v is pd.NaT or (isinstance(v, float) and v != v):
        return None
    return v


def clip_boxes(boxes: np.ndarray, bounds: tuple[float, float, float, float],
               min_visible: float = MIN_VISIBLE) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to ``bounds`` and keep those with enough visible area.

    Args:
        boxes: ``(N, 4)`` boxes, pixels.
        bounds: ``(xmin, ymin, xmax, ymax)`` of the window, same pixels.
        min_visible: minimum share of a box's area inside ``bounds``.

    Returns:
        The clipped kept boxes ``(K, 4)`` and the ``(N,)`` boolean keep mask.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = bounds
    clipped = np.stack([
        np.clip(boxes[:, 0], x0, x1), np.clip(boxes[:, 1], y0, y1),
        np.clip(boxes[:, 2], x0, x1), np.clip(boxes[:, 3], y0, y1),
    ], axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    vis = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    keep = (area > 0) & (vis > 0) & (vis >= min_visible * area)
    return clipped[keep], keep


# --------------------------------------------------------------------------- readers


def is_pixel_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot read the CSV file ({exc}).") from None
    cols = {c.strip().lower() for c in header.split(",")}
    return all(c in cols for c in _PIXEL_CSV_COLUMNS)


def _matches_scene(image_path: str, scene) -> bool:
    name = getattr(scene, "name", None)
    if not name:
        return False
    img = Path(str(image_path).replace("\\", "/")).name
    return img == name or Path(img).stem == Path(name).stem


def _read_pixel_csv(path: Path, scene, class_field: str | None):
    import pandas as pd

    try:
        df = pd.read_csv(path, encoding="utf-8-sig")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise LabelError(f"{path}: cannot parse the CSV ({exc}). Expected columns "
                         "image_path,xmin,ymin,xmax,ymax,label.") from None
    df.columns = [str(c).strip() for c in df.columns]
    df.index = np.arange(1, len(df) + 1)  # the data row number is the box's id
    lower = {c.lower(): c for c in df.columns}
    if len(df) == 0:
        raise LabelError(f"{path}: the CSV has a header but no label rows; add boxes or pass another file.")
    if "image_path" in lower:
        col = df[lower["image_path"]].astype(str)
        images = sorted(set(col))
        hit = col.map(lambda p: _matches_scene(p, scene))
        if hit.any():
            df = df[hit.to_numpy()]
        elif len(images) == 1:
            log.warning("%s: image_path %r does not match scene %s; using the rows anyway",
                        path, images[0], getattr(scene, "name", "?"))
        else:
            shown = ", ".join(images[:10]) + (" ..." if len(images) > 10 else "")
            raise LabelError(f"{path}: no row has an image_path matching scene {getattr(scene, 'name', '?')}; "
                             f"the CSV lists {len(images)} images ({shown}). Pass the matching scene or "
                             "fix image_path.")
    try:
        boxes = df[[lower[c] for c in _PIXEL_CSV_COLUMNS]].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise LabelError(f"{path}: box coordinates must be numbers ({exc}).") from None
    if class_field is not None:
        if class_field not in df.columns:
            raise LabelError(f"{path}: no column {class_field!r}; available columns: "
                             f"{', '.join(df.columns)}. Pass one of them as class field.")
        names = df[class_field]
    elif "label" in lower:
        names = df[lower["label"]]
    else:
        names = None
    if names is not None and names.isna().any():
        raise LabelError(f"{path}: {int(names.isna().sum())} rows have no class; fill the class column.")
    names_list = [DEFAULT_CLASS] * len(df) if names is None else [str(v) for v in names]
    # DeepForest writes a single row with all-zero coordinates for an image without trees.
    real = ~np.all(boxes == 0, axis=1)
    boxes, names_list = boxes[real], [n for n, r in zip(names_list, real, strict=True) if r]
    _check_boxes(path, boxes)
    return boxes, names_list, df.index.to_numpy(np.int64)[real], _attributes_json(df[real])


def _read_voc(path: Path, scene) -> tuple[np.ndarray, list[str]]:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise LabelError(f"{path}: not a readable Pascal VOC XML file ({exc}).") from None
    if root.tag != "annotation":
        raise LabelError(f"{path}: root element is <{root.tag}>, expected Pascal VOC <annotation>.")
    filename = root.findtext("filename")
    if filename and not _matches_scene(filename, scene):
        log.warning("%s: annotation is for %r, not scene %s; using it anyway",
                    path, filename, getattr(scene, "name", "?"))
    boxes, names = [], []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if bb is None or not name:
            raise LabelError(f"{path}: <object> number {i + 1} lacks <name> or <bndbox>.")
        try:
            boxes.append([float(bb.findtext(k)) for k in _PIXEL_CSV_COLUMNS])
        except (TypeError, ValueError):
            raise LabelError(f"{path}: <object> number {i + 1} has a missing or non-numeric "
                             "xmin/ymin/xmax/ymax.") from None
        names.append(name)
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    _check_boxes(path, arr)
    return arr, names


def _check_boxes(path: Path, boxes: np.ndarray) -> None:
    if len(boxes) == 0:
        raise LabelError(f"{path}: contains no labels; add boxes or pass another file.")
    if not np.all(np.isfinite(boxes)):
        raise LabelError(f"{path}: some box coordinates are not finite numbers.")
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelError(f"{path}: {int(bad.sum())} boxes have xmax <= xmin or ymax <= ymin "
                         f"(first: {boxes[i].tolist()}); boxes must be xmin,ymin,xmax,ymax in pixels.")


def _read_vector(path: Path, scene, class_field: str | None, layer: str | None):
    import warnings

    import pyogrio
    import shapely

    try:
        if layer is None:
            layers = [str(n) for n, g in pyogrio.list_layers(path) if g]  # layers with geometry
            if len(layers) > 1:
                layer = layers[0]
                log.warning("%s has %d layers with geometry (%s); reading the boxes from %r, choose another "
                            "with --layer", path, len(layers), ", ".join(layers), layer)
        with warnings.catch_warnings():
            # pyogrio's own warnings (several layers, ...) are replaced by the message above
            warnings.simplefilter("ignore", UserWarning)
            gdf = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
    except Exception as exc:  # pyogrio raises several GDAL-backed types
        raise LabelError(f"{path}: cannot read it as a vector file ({exc}). Pass a GeoPackage, GeoJSON, "
                         "Shapefile, Pascal VOC XML or CSV with xmin,ymin,xmax,ymax columns.") from None
    if "geometry" not in getattr(gdf, "columns", []):
        raise LabelError(f"{path}: layer has no geometry column; pass a layer of boxes or polygons.")
    if len(gdf) == 0:
        raise LabelError(f"{path}: contains no labels (the layer has no features); add boxes or pass "
                         "another file/layer.")
    geoms = gdf.geometry.to_numpy()
    valid = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    if not valid.any():
        raise LabelError(f"{path}: all {len(gdf)} features have empty geometries.")
    dropped = [(int(f), "no geometry") for f in gdf.index[~valid]]
    if (~valid).any():
        log.warning("%s: %d features without geometry skipped (ids %s)", path, int((~valid).sum()),
                    _ids_text([f for f, _ in dropped]))
        gdf = gdf[valid]

    fields = [c for c in gdf.columns if c != "geometry"]
    if class_field is not None:
        if class_field not in fields:
            raise LabelError(f"{path}: no field {class_field!r}; available fields: "
                             f"{', '.join(fields) or '(none)'}. Pass one of them as class field.")
        field = class_field
    else:
        field = next((f for f in fields if f.lower() in DEFAULT_CLASS_FIELDS), None)
    if field is None:
        names = [DEFAULT_CLASS] * len(gdf)
    else:
        values = gdf[field]
        if values.isna().any():
            raise LabelError(f"{path}: {int(values.isna().sum())} features have no value in field "
                             f"{field!r}; fill it or choose another class field.")
        names = [str(v) for v in values]

    layer_crs, scene_crs = gdf.crs, getattr(scene, "crs", None)
    if layer_crs is None and scene_crs is not None:
        raise LabelError(f"{path}: the layer has no CRS, so its coordinates cannot be placed on the scene "
                         f"(CRS {scene_crs}). Assign the right one, e.g. `ogr2ogr -a_srs EPSG:XXXX out.gpkg "
                         f"{path.name}`.")
    if layer_crs is not None and scene_crs is None:
        raise LabelError(f"{path}: the scene has no CRS, so labels in {layer_crs} cannot be placed on it. "
                         "Use pixel-coordinate labels (VOC XML or CSV) for ungeoreferenced images.")
    geoms = gdf.geometry.to_numpy()
    fids = gdf.index.to_numpy(np.int64)
    geoms, closed, open_lines = closed_lines_as_polygons(geoms)
    if closed.any():
        log.warning("%s: %d closed lines (ids %s) are taken as the polygons they ring; save them as polygons "
                    "to silence this", path, int(closed.sum()), _ids_text(fids[closed]))
    if layer_crs is not None and not same_crs(layer_crs, scene_crs):
        geoms = reproject_labels(path, geoms, layer_crs, scene_crs)
    inv = ~scene.transform

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f])

    # Bounds after mapping to pixels (not before), so the box stays tight
    # whatever the sign of the scene's pixel height.
    boxes = shapely.bounds(shapely.transform(geoms, to_pixels))
    if not np.all(np.isfinite(boxes)):
        raise LabelError(f"{path}: some labels cannot be transformed from {layer_crs} to the scene CRS "
                         f"{scene_crs} (non-finite coordinates); check the layer's CRS.")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # an open line is no outline, whatever its extent (its bounding box was once taken as a box)
    degenerate = ~(area > 0) | open_lines
    if degenerate.all():
        raise LabelError(f"{path}: no feature has an area (points or open lines); labels must be boxes or "
                         "polygons (a closed line is read as the polygon it rings).")
    attrs = _attributes_json(gdf)
    if degenerate.any():
        dropped += [(int(f), "no area (a point or open line)") for f in fids[degenerate]]
        log.warning("%s: %d point/open line features without area skipped (ids %s)", path, int(degenerate.sum()),
                    _ids_text(fids[degenerate]))
        boxes = boxes[~degenerate]
        names = [n for n, d in zip(names, degenerate, strict=True) if not d]
        attrs = tuple(a for a, d in zip(attrs, degenerate, strict=True) if not d)
        fids = fids[~degenerate]
    return boxes, names, fids, attrs, dropped


def closed_lines_as_polygons(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lines that close on themselves become the polygons they ring; other lines are flagged.

    A box or outline drawn in a line layer is a closed ring: it is read as that polygon (the
    callers warn, naming the features). An open line outlines nothing (its bounding box is not
    an object), so it is reported like a point.

    Returns:
        ``(geoms, closed, open_lines)``: the geometries with closed (Multi)LineStrings replaced
        by (Multi)Polygons, and boolean masks of the features that were closed lines and of
        those that are open lines.
    """
    import shapely

    geoms = np.asarray(geoms, dtype=object).copy()
    closed = np.zeros(len(geoms), dtype=bool)
    open_lines = np.zeros(len(geoms), dtype=bool)
    types = shapely.get_type_id(geoms)
    line_types = (shapely.GeometryType.LINESTRING, shapely.GeometryType.LINEARRING,
                  shapely.GeometryType.MULTILINESTRING)
    for i in np.flatnonzero(np.isin(types, [int(t) for t in line_types])):
        parts = shapely.get_parts(geoms[i])
        if len(parts) and all(shapely.is_closed(q) and shapely.get_num_points(q) >= 4 for q in parts):
            polys = [shapely.Polygon(shapely.get_coordinates(q)) for q in parts]
            poly = polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
            if shapely.area(poly) > 0:
                geoms[i], closed[i] = poly, True
                continue
        open_lines[i] = True
    return geoms, closed, open_lines


def reproject_labels(path: Path, geoms: np.ndarray, src, dst) -> np.ndarray:
    """Label geometries of ``path`` from ``src`` to the scene CRS ``dst``; a LabelError names the file and fix."""
    import shapely
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError, ProjError

    try:
        src_crs = CRS.from_user_input(src)
        dst_crs = CRS.from_user_input(dst.to_wkt() if hasattr(dst, "to_wkt") else dst)
        tr = Transformer.from_crs(src_crs, dst_crs, always_xy=True)
    except (CRSError, ProjError) as exc:
        raise LabelError(f"{path}: cannot transform labels from {src} to the scene CRS {dst} ({exc}). "
                         "Reproject the labels to the scene CRS (e.g. with ogr2ogr -t_srs).") from None

    coords = shapely.get_coordinates(geoms)
    try:
        x, y = tr.transform(coords[:, 0], coords[:, 1], errcheck=False)
    except ProjError as exc:
        raise LabelError(f"{path}: cannot transform labels from {src} to the scene CRS {dst} ({exc}). "
                         "Reproject the labels to the scene CRS (e.g. with ogr2ogr -t_srs).") from None
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise LabelError(f"{path}: {int(bad.sum())} label vertices cannot be transformed from {src} to the "
                         f"scene CRS {dst} (coordinates invalid in {src}?); check the layer's CRS or "
                         "reproject the labels to the scene CRS.")
    return shapely.set_coordinates(geoms.copy(), np.column_stack([x, y]))


def _contiguous_class_ids(path: Path, names: list[str], class_map) -> tuple[tuple[str, ...], np.ndarray]:
    """The class names in id order and each box's 0-based class id (0..K-1 without gaps, as a model
    numbers its classes): ``class_map``'s order, else the names sorted."""
    if class_map is None:
        classes = tuple(sorted(set(names)))
    elif isinstance(class_map, Mapping):
        ids = sorted(class_map.values())
        if ids != list(range(len(ids))):
            raise LabelError(f"class map ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        classes = tuple(sorted(class_map, key=lambda k: class_map[k]))
    else:
        classes = tuple(str(c) for c in class_map)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise LabelError(f"{path}: classes {unknown} are not among the expected classes {list(classes)}; "
                         "choose the right class field or relabel.")
    return classes, np.asarray([index[n] for n in names], dtype=np.int64)


def as_labelset(boxes, scene, class_field: str | None = None, layer: str | None = None,
                min_visible: float = MIN_VISIBLE, option: str = "--boxes") -> LabelSet:
    """Boxes of ``scene`` from a label file path, a :class:`LabelSet`, or ``(boxes, names)`` arrays.

    Arrays are scene pixel boxes ``(N, 4)`` xyxy or rotated corners ``(N, 4, 2)``
    (which become their RH-box); ``names`` may be None (every box class ``"0"``); their ids are their
    positions from 1. ``min_visible``, ``option`` (the option naming a path, for messages): see
    :func:`read_labels`.
    """
    if isinstance(boxes, str | os.PathLike):
        return read_labels(boxes, scene, class_field=class_field, layer=layer, min_visible=min_visible,
                           option=option)
    if isinstance(boxes, LabelSet):
        return boxes
    if isinstance(boxes, tuple) and len(boxes) == 2:
        from geors.masks.prompts import as_boxes

        arr, names = boxes
        b = as_boxes(arr)
        names = ["0"] * len(b) if names is None else [str(n) for n in names]
        if len(names) != len(b):
            raise LabelError(f"{len(b)} boxes but {len(names)} class names")
        classes, ids = _contiguous_class_ids(Path("<arrays>"), names, None)
        return LabelSet(b, tuple(names), ids, classes, Path("<arrays>"), fids=np.arange(1, len(b) + 1))
    raise LabelError("boxes must be a label file path, a LabelSet or a (boxes, names) tuple")
