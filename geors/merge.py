"""Seam rules: which tile keeps an object, without any scene-wide O(n^2) pass.

An instance (box, mask) belongs to the tile whose *core* contains its box
centre; every other tile that sees it drops it. With overlap d >= the largest
object, the owner tile sees the object whole.

Semantic segmentation: each tile contributes only its core
(:func:`segment_polygons`); same-class polygons that touch across a core
boundary are then merged using only the polygons along core boundaries
(:func:`dissolve_groups`, :func:`dissolve_across_cores`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from geors.results import SegmentPolygon
from geors.tiling import Tile

__all__ = ["owned_mask", "box_centres", "on_valid", "apply_seams", "segment_polygons", "dissolve_groups",
           "merge_geometries", "dissolve_across_cores", "dissolve_scene"]


def box_centres(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Centres (N, 2) as (x, y) of boxes (N, 4) ``xmin, ymin, xmax, ymax``."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.column_stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2])


def owned_mask(tile: Tile, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Bool (N,): which tile-local pixel boxes this tile owns (centre in its core).

    The core is half-open (``[lo, hi)`` on both axes), so a centre on a shared
    core edge has exactly one owner.
    """
    c = box_centres(boxes_xyxy)
    core = tile.core_in_tile
    x0, y0 = core.col_off, core.row_off
    return (c[:, 0] >= x0) & (c[:, 0] < x0 + core.width) & (c[:, 1] >= y0) & (c[:, 1] < y0 + core.height)


def on_valid(valid: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Bool (N,): box centres that fall on valid pixels of the tile (not nodata, not padding)."""
    c = box_centres(boxes_xyxy)
    h, w = valid.shape
    cx = np.clip(c[:, 0].astype(int), 0, w - 1)
    cy = np.clip(c[:, 1].astype(int), 0, h - 1)
    return valid[cy, cx]


def apply_seams(tile: Tile, image, result, classes: tuple[str, ...] = ()):
    """The pipeline's seam rules on one tile's stage result (in place; returns it).

    - detections: kept when the tile's core holds the box centre and the centre
      lies on valid pixels (a box centred on nodata or padding is an artefact
      of the border);
    - instances: kept with their detection (``detection_index`` remapped), or,
      for box-prompted instances without a detection, when the tile's core
      holds the centre of their own ``box_px`` (the box was given by the user:
      it is outlined even when its centre lies on nodata);
    - class raster: clipped to the core and polygonised (``segment_polygons``);
      polygons along inner core edges are marked for the dissolve across cores.

    Stages return everything they saw; only this function decides what a tile keeps.

    Args:
        tile: the :class:`geors.tiling.Tile`.
        image: its :class:`geors.raster.TileImage` (``valid`` marks nodata and padding).
        result: the stage's :class:`geors.results.TileResult` for the tile.
        classes: names of the class raster's ids.
    """
    valid = image.valid
    if result.detections:
        boxes = np.array([d.box_px if d.box_px is not None else (np.nan,) * 4 for d in result.detections],
                         dtype=np.float64)
        has_box = ~np.isnan(boxes).any(axis=1)
        keep = ~has_box
        if has_box.any():
            keep[has_box] = owned_mask(tile, boxes[has_box]) & on_valid(valid, boxes[has_box])
        remap = {old: new for new, old in enumerate(np.flatnonzero(keep))}
        result.detections = [d for d, k in zip(result.detections, keep, strict=True) if k]
    else:
        remap = {}
    kept_instances = []
    for inst in result.instances:
        if inst.detection_index is not None:
            if inst.detection_index in remap:
                inst.detection_index = remap[inst.detection_index]
                kept_instances.append(inst)
        elif inst.box_px is not None:
            # a box the user gave is outlined wherever its centre lies (nodata included): only ownership
            b = np.asarray(inst.box_px, dtype=np.float64)[None]
            if owned_mask(tile, b)[0]:
                kept_instances.append(inst)
        else:
            kept_instances.append(inst)
    result.instances = kept_instances
    if result.class_raster is not None:
        result.segmentation.extend(segment_polygons(tile, image, result.class_raster, classes))  # noqa: F821
    return result


# ----------------------------------------------------------------------------- segmentation seams
def segment_polygons(tile: Tile, tile_image, class_raster: np.ndarray, class_names: Sequence[str],
                     scene_shape: tuple[int, int] | None = None) -> list[SegmentPolygon]:
    """Polygons of one tile's class raster, clipped to the tile's core (valid pixels only).

    One polygon per 4-connected region of one class inside the core; pixels
    255 ("no class") and pixels not valid in ``tile_image`` give nothing.
    Geometries are in the scene CRS (``tile.transform``). A polygon that
    reaches an *inner* core edge (a core side that is not the scene border)
    has ``edge=True``: only those can continue in a neighbouring core and are
    candidates for :func:`dissolve_groups`.

    Args:
        tile: the tile (core window, transform).
        tile_image: the tile's :class:`geors.raster.TileImage` (only ``valid`` is used) or None.
        class_raster: uint8 ``(H, W)`` tile-local class ids, 255 = no class.
        class_names: names of the class ids.
        scene_shape: ``(height, width)`` of the scene in pixels; without it the right/bottom core
            sides are always treated as inner (more candidates, same result).

    Returns:
        :class:`geors.results.SegmentPolygon` list (``class_name``, ``class_id``, ``geometry``, ``edge``).
    """
    import shapely
    from rasterio.features import shapes

    core = tile.core_in_tile
    r0, c0 = int(core.row_off), int(core.col_off)
    h, w = int(core.height), int(core.width)
    arr = np.array(np.asarray(class_raster)[r0:r0 + h, c0:c0 + w], dtype=np.uint8)
    if tile_image is not None:
        arr[~np.asarray(tile_image.valid)[r0:r0 + h, c0:c0 + w]] = 255
    if arr.size == 0 or (arr == 255).all():
        return []
    # inner core sides in core pixel coordinates
    inner_left = tile.core.col_off > 0
    inner_top = tile.core.row_off > 0
    if scene_shape is None:
        inner_right = inner_bottom = True
    else:
        inner_right = tile.core.col_off + w < scene_shape[1]
        inner_bottom = tile.core.row_off + h < scene_shape[0]
    t = tile.transform
    out: list[SegmentPolygon] = []
    for geom, value in shapes(arr, mask=arr != 255, connectivity=4):
        cid = int(value)
        poly = shapely.geometry.shape(geom)  # core pixel coordinates (integers)
        minx, miny, maxx, maxy = poly.bounds
        edge = bool((inner_left and minx <= 0) or (inner_top and miny <= 0)
                    or (inner_right and maxx >= w) or (inner_bottom and maxy >= h))

        def to_crs(xy: np.ndarray) -> np.ndarray:
            col, row = xy[:, 0] + c0, xy[:, 1] + r0  # tile pixels
            return np.column_stack([t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f])

        name = class_names[cid] if cid < len(class_names) else str(cid)
        out.append(SegmentPolygon(shapely.transform(poly, to_crs), name, cid, edge))
    return out


def dissolve_groups(features: Iterable[tuple[int, int, object, bool]], tolerance: float = 0.0) -> list[list[int]]:
    """Which segmentation features to merge across core boundaries.

    The interface is deliberately tiny so that it runs on rows already written
    to the GeoPackage: pass ``(fid, class_id, geometry, edge)`` for the
    features of one scene (rows with ``edge`` False are skipped, so the caller
    may pass only edge rows, e.g. ``SELECT fid, class_id, geom FROM
    segmentation WHERE edge = 1 AND scene = ?``). Two features of the same
    class are joined when they share a boundary of positive length (within
    ``tolerance``, in CRS units); groups are closed transitively (union-find),
    so a region spread over many cores becomes one group. Candidate pairs
    come from an STR-tree over the edge features' envelopes: no all-pairs pass
    and no raster of the scene.

    The caller then replaces each group by one feature:
    :func:`merge_geometries` of the group's geometries, with the class of
    the group, its area recomputed, and the smallest fid (or a new row) kept.

    Args:
        features: ``(fid, class_id, geometry, edge)`` tuples; geometry in the scene CRS.
        tolerance: coordinates closer than this are the same (use ~1e-3 of a pixel size:
            neighbouring tiles compute the shared edge through different transforms).

    Returns:
        Groups of fids (each of 2 or more features), sorted.
    """
    import shapely

    fids: list[int] = []
    classes: list[int] = []
    geoms: list[object] = []
    for fid, cid, geom, edge in features:
        if edge and geom is not None and not shapely.is_empty(geom):
            fids.append(int(fid))
            classes.append(int(cid))
            geoms.append(geom)
    if len(geoms) < 2:
        return []
    garr = np.array(geoms, dtype=object)
    tree = shapely.STRtree(garr)
    left, right = tree.query(garr, predicate="dwithin", distance=max(tolerance, 0.0)) if tolerance > 0 else \
        tree.query(garr, predicate="intersects")
    parent = list(range(len(geoms)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    cls = np.asarray(classes)
    sel = (left < right) & (cls[left] == cls[right])
    for i, j in zip(left[sel].tolist(), right[sel].tolist(), strict=True):
        if find(i) == find(j):
            continue
        if _share_boundary(geoms[i], geoms[j], tolerance):
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(geoms)):
        groups.setdefault(find(i), []).append(fids[i])
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def _share_boundary(a, b, tolerance: float) -> bool:
    """Whether two polygons share a boundary piece longer than the tolerance (corner contact is not enough)."""
    import shapely

    if tolerance > 0:
        shared = shapely.intersection(shapely.boundary(a), shapely.buffer(shapely.boundary(b), tolerance))
        return float(shapely.length(shared)) > 4 * tolerance
    return float(shapely.length(shapely.intersection(shapely.boundary(a), shapely.boundary(b)))) > 0


def merge_geometries(geoms: Sequence, tolerance: float = 0.0):
    """Union of one group's geometries; with ``tolerance`` on a grid of that size so seams close exactly."""
    import shapely

    merged = shapely.union_all(list(geoms), grid_size=tolerance or None)
    return shapely.make_valid(merged) if not shapely.is_valid(merged) else merged


def dissolve_across_cores(polygons: Sequence[SegmentPolygon], tolerance: float = 0.0) -> list[SegmentPolygon]:
    """In-memory form of the dissolve: same-class ``SegmentPolygon`` touching across cores become one.

    Polygons with ``edge`` False pass through untouched; edge polygons are
    grouped with :func:`dissolve_groups` and each group replaced by the union
    of its members (``edge`` False: it is final). Useful for tests and for
    callers that keep one scene's edge polygons in memory; the pipeline runs
    :func:`dissolve_groups` on the rows it wrote.
    """
    groups = dissolve_groups(((i, p.class_id, p.geometry, p.edge) for i, p in enumerate(polygons)), tolerance)
    grouped = {i for g in groups for i in g}
    out = [p for i, p in enumerate(polygons) if i not in grouped]
    for g in groups:
        first = polygons[g[0]]
        out.append(SegmentPolygon(merge_geometries([polygons[i].geometry for i in g], tolerance),
                                  first.class_name, first.class_id, False))
    return out


def dissolve_scene(writer, scene: str, tolerance: float | None = None) -> int:
    """Dissolve one scene's segmentation rows across core boundaries, in the GeoPackage (idempotent).

    Reads only the rows marked ``edge`` (polygons that reach an inner core
    edge), groups them with :func:`dissolve_groups`, and replaces each group
    by one feature (union, still ``edge`` so a later pass can extend it, area recomputed) in one transaction. A
    run interrupted before or during this step leaves correct per-core
    polygons; the next ``--resume`` dissolves them.

    Args:
        writer: an open :class:`geors.vector.GeoPackageWriter` with a ``segmentation`` layer.
        scene: the scene's name.
        tolerance: coordinate tolerance in the layer's CRS units (default: 1e-6 of the layer's extent).

    Returns:
        The number of features removed by merging.
    """
    from geors.crs import areas_m2

    rows = writer.read_rows("segmentation", "scene = ? AND edge = 1", (scene,),
                            fields=("class", "class_id", "tile_id", "scene"))
    if len(rows) < 2:
        return 0
    if tolerance is None:
        import shapely

        b = shapely.total_bounds([g for _, _, g in rows])
        tolerance = 1e-7 * max(b[2] - b[0], b[3] - b[1], 1e-9)
    groups = dissolve_groups(((fid, f["class_id"], g, True) for fid, f, g in rows), tolerance)
    if not groups:
        return 0
    by_fid = {fid: (f, g) for fid, f, g in rows}
    merged = [merge_geometries([by_fid[i][1] for i in g], tolerance) for g in groups]
    areas = areas_m2(merged, writer.layer_crs("segmentation"))
    new_rows = [{**{k: by_fid[g[0]][0][k] for k in ("class", "class_id", "tile_id", "scene")},
                 "area_m2": float(a), "edge": 1} for g, a in zip(groups, areas, strict=True)]
    writer.replace_rows("segmentation", [i for g in groups for i in g], new_rows, merged)
    return sum(len(g) for g in groups) - len(groups)
