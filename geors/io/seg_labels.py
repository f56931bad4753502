"""Segmentation label readers: label rasters and polygon layers, window by window on a scene grid.

Used by segmenter training (:mod:`geors.train.seg_data`) and by segmentation
evaluation (:mod:`geors.evaluate.segmentation`).

* A **label raster** (e.g. from ``geors label``): integer class ids, 255 =
  unlabelled. Class names come from ``classes`` or the raster's
  ``geors_classes`` tag (JSON ``{"name": id}``). A raster on another grid or in
  another CRS is reprojected on the fly to the scene grid (nearest neighbour,
  window by window through a GDAL warped VRT); one without a CRS for a scene
  with one (or the reverse) is refused with both CRSs named.
* A **polygon layer** in any OGR format and any CRS (reprojected to the scene
  CRS), classes from ``class_field`` (or a ``class``/``label`` field). It is
  rasterised window by window; smaller polygons are painted last so they stay
  visible where polygons overlap. Pixels outside every polygon read as 255;
  what they mean (background or unknown) is the caller's decision.
* An **area mask** (:class:`AreaMask`): polygons of the area where the labels
  are complete (training's ``--labelled-area``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geors.crs import crs_text
from geors.errors import LabelError

__all__ = ["IGNORE", "LabelSource", "AreaMask", "open_label_source", "is_raster_path", "RASTER_SUFFIXES"]

log = logging.getLogger(__name__)

#: Label value of an unlabelled pixel.
IGNORE = 255
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png"}


def is_raster_path(path: str | Path) -> bool:
    """Whether a labels path is a raster (by suffix; vector formats otherwise)."""
    return Path(path).suffix.lower() in RASTER_SUFFIXES


class LabelSource:
    """Labels of one scene readable window by window on the scene grid.

    Attributes:
        path: the labels file.
        names: class name -> id in this source's own numbering.
        kind: ``"raster"`` (255 = unlabelled) or ``"polygons"`` (objects drawn in a GIS).
    """

    path: Path
    names: dict[str, int]
    kind: str = ""

    def may_have_labels(self, window) -> bool:
        """Whether the window may hold a label pixel (False only when it certainly holds none)."""
        return True

    def read(self, window) -> np.ndarray:  # pragma: no cover - interface
        """uint8 ``(h, w)`` class ids of a scene window (255 = no label)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _RasterLabels(LabelSource):
    kind = "raster"

    def __init__(self, path: Path, scene, classes: Sequence[str] | None):
        import rasterio
        from rasterio.vrt import WarpedVRT

        self.path = path
        try:
            self._src = rasterio.open(path)
        except Exception as exc:  # noqa: BLE001 - rasterio raises several types
            raise LabelError(f"{path}: cannot open the label raster ({exc}); pass a GeoTIFF of class ids.") from None
        src = self._src
        if src.count != 1 or src.dtypes[0] not in ("uint8", "int8", "uint16", "int16", "int32", "uint32"):
            self._src.close()
            raise LabelError(f"{path}: a label raster must have one integer band of class ids (255 = unlabelled); "
                             f"it has {src.count} band(s) of {src.dtypes[0]}.")
        scene_crs = scene.crs
        if (src.crs is None) != (scene_crs is None):
            self._src.close()
            raise LabelError(
                f"{path}: the label raster has {crs_text(src.crs)} but the scene {scene.path} has "
                f"{crs_text(scene_crs)}; labels cannot be placed on the scene. Assign the right CRS to the "
                f"labels (gdal_edit.py -a_srs ...) or write them with `geors label` on this scene.")
        self._ds = src
        same_grid = (src.width == scene.width and src.height == scene.height
                     and (scene_crs is None or (src.crs == scene_crs and src.transform.almost_equals(scene.transform))))
        if scene_crs is None and not same_grid:
            self._src.close()
            raise LabelError(f"{path}: {src.width}x{src.height} pixels but the scene {scene.path} is "
                             f"{scene.width}x{scene.height} and neither has a CRS to align them; write the labels "
                             "on the scene's grid.")
        if not same_grid:
            if src.crs != scene_crs:
                log.warning("%s: label raster in %s, scene in %s: reprojecting labels to the scene grid "
                            "(nearest neighbour)", path, crs_text(src.crs), crs_text(scene_crs))
            try:
                self._ds = WarpedVRT(src, crs=scene_crs, transform=scene.transform, width=scene.width,
                                     height=scene.height, resampling=rasterio.enums.Resampling.nearest,
                                     nodata=IGNORE, src_nodata=src.nodata if src.nodata is not None else IGNORE)
            except Exception as exc:  # noqa: BLE001
                self._src.close()
                raise LabelError(f"{path}: cannot reproject the labels from {crs_text(src.crs)} to the scene CRS "
                                 f"{crs_text(scene_crs)} ({exc}); reproject them with gdalwarp.") from None
        if classes:
            self.names = {str(n): i for i, n in enumerate(classes)}
        else:
            tag = src.tags().get("geors_classes")
            if not tag:
                self._src.close()
                raise LabelError(f"{path}: the label raster has no class names (no geors_classes tag); "
                                 "pass them in id order with --classes name0,name1,...")
            try:
                self.names = {str(k): int(v) for k, v in json.loads(tag).items()}
            except (ValueError, AttributeError):
                self._src.close()
                raise LabelError(f"{path}: the geors_classes tag is not JSON {{\"name\": id}}; pass --classes.") from None

    def read(self, window) -> np.ndarray:
        data = self._ds.read(1, window=window, boundless=False)
        if data.dtype != np.uint8:
            bad = (data < 0) | (data > IGNORE)
            if bad.any():
                raise LabelError(f"{self.path}: class ids outside 0..254 (e.g. {int(data[bad][0])}); "
                                 "ids must fit in uint8 with 255 = unlabelled.")
            data = data.astype(np.uint8)
        return data

    def close(self) -> None:
        if self._ds is not self._src:
            self._ds.close()
        self._src.close()


class _PolygonLabels(LabelSource):
    kind = "polygons"

    def __init__(self, path: Path, scene, class_field: str | None, layer: str | None, one_class: bool = False):
        import pyogrio
        import shapely

        from geors.crs import same_crs
        from geors.io.box_labels import DEFAULT_CLASS_FIELDS, closed_lines_as_polygons, reproject_labels

        self.path = path
        try:
            gdf = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
        except Exception as exc:  # noqa: BLE001
            raise LabelError(f"{path}: cannot read it as a polygon layer ({exc}); pass a GeoPackage, GeoJSON, "
                             "Shapefile or a label raster (.tif).") from None
        if len(gdf) == 0 or "geometry" not in gdf.columns:
            raise LabelError(f"{path}: no polygons in the layer; add labels or pass another file/layer.")
        fields = [c for c in gdf.columns if c != "geometry"]
        if one_class:
            fields, class_field = [], None
        if class_field is not None and class_field not in fields:
            raise LabelError(f"{path}: no field {class_field!r}; available fields: {', '.join(fields) or '(none)'}.")
        fld = class_field or next((f for f in fields if f.lower() in DEFAULT_CLASS_FIELDS), None)
        # a closed line is the polygon it rings; points and open lines are left out, by id (issue 26.8)
        geoms, closed, _ = closed_lines_as_polygons(gdf.geometry.to_numpy())
        fids = gdf.index.to_numpy()
        if closed.any():
            log.warning("%s: %d closed lines (ids %s) are taken as the polygons they ring; save them as polygons "
                        "to silence this", path, int(closed.sum()), ", ".join(map(str, fids[closed][:10])))
        keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
        keep &= shapely.area(geoms) > 0 if keep.any() else keep
        if not keep.any():
            raise LabelError(f"{path}: no feature has an area (points or open lines); segmentation labels must be "
                             "polygons (a closed line is read as the polygon it rings).")
        if not keep.all():
            log.warning("%s: %d features without area (points, open lines or empty) left out (ids %s)", path,
                        int((~keep).sum()), ", ".join(map(str, fids[~keep][:10])))
        names = ["object"] * len(gdf) if fld is None else [str(v) for v in gdf[fld]]
        if fld is not None and gdf[fld].isna().any():
            raise LabelError(f"{path}: features without a value in {fld!r}; fill it or choose another --class-field.")
        layer_crs, scene_crs = gdf.crs, scene.crs
        if (layer_crs is None) != (scene_crs is None):
            raise LabelError(f"{path}: the layer has {crs_text(layer_crs)} but the scene {scene.path} has "
                             f"{crs_text(scene_crs)}; assign the right CRS to the layer (ogr2ogr -a_srs ...).")
        geoms = geoms[keep]
        names = [n for n, k in zip(names, keep, strict=True) if k]
        if layer_crs is not None and not same_crs(layer_crs, scene_crs):
            geoms = reproject_labels(path, geoms, layer_crs, scene_crs)
        uniq = sorted(set(names))
        self.names = {n: i for i, n in enumerate(uniq)}
        ids = np.array([self.names[n] for n in names], np.int64)
        order = np.argsort(-shapely.area(geoms), kind="stable")  # larger first: small ones stay visible
        self._geoms = geoms[order]
        self._ids = ids[order]
        self._tree = shapely.STRtree(self._geoms)
        self._transform = scene.transform

    def may_have_labels(self, window) -> bool:
        import shapely
        from rasterio.windows import bounds as win_bounds

        return bool(len(self._tree.query(shapely.box(*win_bounds(window, self._transform)))))

    def read(self, window) -> np.ndarray:
        import shapely
        from rasterio.features import rasterize
        from rasterio.windows import bounds as win_bounds
        from rasterio.windows import transform as win_transform

        shape = (int(window.height), int(window.width))
        hits = np.sort(self._tree.query(shapely.box(*win_bounds(window, self._transform))))
        if not len(hits):
            return np.full(shape, IGNORE, np.uint8)
        return rasterize(((self._geoms[i], int(self._ids[i])) for i in hits), out_shape=shape,
                         transform=win_transform(window, self._transform), fill=IGNORE, dtype="uint8")


def open_label_source(path: str | Path, scene, class_field: str | None = None, classes: Sequence[str] | None = None,
                      layer: str | None = None, option: str | None = None) -> LabelSource:
    """A :class:`LabelSource` for a label raster or a polygon layer (decided by the suffix).

    ``option``: the option or argument that named ``path`` (``--labels``, ``TRUTH``), named when it is missing.

    Raises:
        LabelError: missing or unreadable file, CRS mismatch, no class names, no polygon with an area.
    """
    p = Path(path)
    if not p.exists():
        given = f" (given as {option})" if option else ""
        raise LabelError(f"{p}: labels file not found{given}. Check the path.")
    if is_raster_path(p):
        return _RasterLabels(p, scene, classes)
    return _PolygonLabels(p, scene, class_field, layer)




class AreaMask:
    """Where labels are complete: polygons of an area of interest, read as a boolean mask on the scene grid.

    Args:
        path: polygon file in any OGR format and CRS (any attributes; every polygon counts).
        scene: the scene whose grid the mask is read on.
    """

    def __init__(self, path: str | Path, scene):
        p = Path(path)
        if not p.exists():
            raise LabelError(f"{p}: labelled-area file not found.")
        if is_raster_path(p):
            raise LabelError(f"{p}: the labelled area must be polygons (GeoPackage, GeoJSON, Shapefile), not a raster.")
        self.path = p
        self._src = _PolygonLabels(p, scene, None, None, one_class=True)

    def read(self, window) -> np.ndarray:
        """bool ``(h, w)``: True inside the area."""
        return self._src.read(window) != IGNORE

    def close(self) -> None:
        self._src.close()
