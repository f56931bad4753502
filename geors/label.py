"""SAMRS labelling: boxes -> instance masks -> a semantic label raster aligned with the scene.

The recipe of SAMRS (Wang et al., 2023) as a GIS tool:

1. Boxes come from any vector file OGR reads, in any CRS (reprojected to the
   scene CRS by :func:`geors.io.labels.read_labels`), or from arrays. A
   rotated box becomes its circumscribed horizontal box (RH-box), the prompt
   SAMRS recommends for rotated-box labels.
2. Each box is turned into a mask by a mask engine (SAM, GrabCut or the box
   itself, see :mod:`geors.masks`), reading each tile of the scene once.
3. The label raster is written window by window (never the whole scene in
   memory): uint8, same width/height/transform/CRS as the scene, tiled
   256 x 256, DEFLATE; 255 = unlabelled (also set as nodata), otherwise the
   class id (0..254).

Overlapping instances: instances are painted in order, later ones overwrite
earlier ones. ``order="larger_first"`` (default) paints larger masks first so
small objects on top of large ones stay visible; ``"smaller_first"`` is the
reverse; ``"input"`` keeps file order. Ties keep file order.

The optional instance raster (uint32, same grid, 0 = no instance) holds
``1 + k`` where ``k`` is the index of the box among the boxes read (file order,
after boxes outside the scene were dropped), with the same overwrite order.

Class ids: with ``class_map`` (a dict, or a JSON ``{"name": id}`` / CSV
``name,id`` file) names map to the given ids. Without it, when every class
value is an integer in 0..254 the value itself is the id; otherwise the sorted
unique names get ids 0..K-1. Without a class field every box is class 0. The
mapping used is stored in the TIFF metadata tag ``geors_classes`` (JSON).

Outputs are written to a temporary file in the destination directory and
renamed into place, so an existing file is never left half written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geors.errors import ConfigError, LabelError, OutputError

__all__ = ["LabelRasterReport", "write_label_raster", "read_class_map", "UNLABELLED"]

log = logging.getLogger(__name__)

UNLABELLED = 255
ORDERS = ("larger_first", "smaller_first", "input")


@dataclass
class LabelRasterReport:
    """What :func:`write_label_raster` wrote.

    Attributes:
        path: the label raster.
        instance_path: the instance-id raster, or None.
        classes: class name -> id used.
        n_boxes: boxes read.
        n_empty: boxes whose mask was empty (nothing painted).
        mask_method: the engine's ``mask_method`` value.
        labelled_pixels: pixels with a class id (not 255).
    """

    path: Path
    instance_path: Path | None
    classes: dict[str, int]
    n_boxes: int
    n_empty: int
    mask_method: str
    labelled_pixels: int = 0
    order: str = "larger_first"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "instance_path": str(self.instance_path) if self.instance_path else None,
            "classes": self.classes,
            "n_boxes": self.n_boxes,
            "n_empty": self.n_empty,
            "mask_method": self.mask_method,
            "labelled_pixels": self.labelled_pixels,
            "order": self.order,
        }


def read_class_map(path: str | os.PathLike) -> dict[str, int]:
    """Read a class mapping file: JSON ``{"name": id}`` or CSV with ``name,id`` rows (header optional).

    Raises:
        LabelError: unreadable file, ids that are not integers in 0..254.
    """
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"{p}: class map file not found.")
    try:
        if p.suffix.lower() == ".json":
            raw = json.loads(p.read_text())
            if not isinstance(raw, dict):
                raise LabelError(f"{p}: a JSON class map must be an object {{\"name\": id}}.")
            items = list(raw.items())
        else:
            with open(p, newline="") as f:
                rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
            if rows and not rows[0][1].strip().lstrip("-").isdigit():
                rows = rows[1:]  # header
            items = [(r[0].strip(), r[1].strip()) for r in rows]
    except (OSError, ValueError, IndexError) as exc:
        raise LabelError(f"{p}: cannot read the class map ({exc}); use JSON {{\"name\": id}} or CSV name,id.") from exc
    return _check_map({str(k): v for k, v in items}, str(p))


def _check_map(mapping: Mapping, source: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in mapping.items():
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise LabelError(f"{source}: class id {v!r} of {k!r} is not an integer.") from None
        if not 0 <= iv <= 254:
            raise LabelError(f"{source}: class id {iv} of {k!r} is outside 0..254 (255 means unlabelled).")
        out[str(k)] = iv
    return out


def _class_ids(names: list[str], class_map) -> tuple[np.ndarray, dict[str, int]]:
    if class_map is not None:
        mapping = read_class_map(class_map) if isinstance(class_map, str | os.PathLike) else _check_map(
            class_map, "class map")
        unknown = sorted(set(names) - set(mapping))
        if unknown:
            raise LabelError(f"classes {unknown} are not in the class map {mapping}; add them to the map.")
    elif names and all(n.strip().lstrip("-").isdigit() for n in names):
        mapping = _check_map({n: int(n) for n in sorted(set(names), key=int)}, "class field")
    else:
        mapping = {n: i for i, n in enumerate(sorted(set(names)))}
        if len(mapping) > 255:
            raise LabelError(f"{len(mapping)} classes do not fit a uint8 label raster (max 255).")
    return np.array([mapping[n] for n in names], dtype=np.int64), mapping


def _atomic_target(out: Path) -> Path:
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{out}: the output directory {parent} does not exist; create it first.")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; give a .tif file path.")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.tif", dir=parent)
    os.close(fd)
    return Path(tmp)


def write_label_raster(
    scene,
    boxes,
    out_path: str | os.PathLike,
    class_field: str | None = None,
    class_map: Mapping[str, int] | str | os.PathLike | None = None,
    engine="auto",
    instance_raster: str | os.PathLike | None = None,
    order: str = "larger_first",
    *,
    grid=None,
    device: str = "auto",
    layer: str | None = None,
    block: int = 1024,
) -> LabelRasterReport:
    """Write a SAMRS-style semantic label raster (and optionally instance ids) for a scene.

    Args:
        scene: a :class:`geors.raster.Scene` or a raster path.
        boxes: a vector file path (boxes/polygons in any CRS), a
            :class:`geors.io.labels.LabelSet`, or a tuple
            ``(boxes, names)`` with (N, 4) scene pixel boxes xyxy (or (N, 4, 2)
            rotated corners) and N class names (or None).
        out_path: label GeoTIFF to write (replaced atomically if it exists).
        class_field: attribute holding the class (vector input).
        class_map: name -> id mapping, or a JSON/CSV file of it (ids 0..254).
        engine: a :class:`geors.masks.MaskEngine` or a spec for
            :func:`geors.masks.make_mask_engine` (``auto``, ``vit_b``,
            ``grabcut``, ``box``, a checkpoint path...).
        instance_raster: optional uint32 instance-id GeoTIFF to write.
        order: ``larger_first`` | ``smaller_first`` | ``input`` (see module doc).
        grid: :class:`geors.tiling.TileGrid` for reading pixels (default
            1024 px tiles, 256 px overlap).
        device: for SAM engines.
        layer: layer of a multi-layer vector file.
        block: output window size in pixels (multiple of 256).

    Returns:
        A :class:`LabelRasterReport`.

    Raises:
        LabelError: unreadable/empty boxes, unknown classes, ids outside 0..254.
        OutputError: output directory missing or not writable.
        ConfigError: unknown ``order``.
    """
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform
    from shapely import STRtree

    from geors.masks import MaskEngine, make_mask_engine, masks_for_boxes
    from geors.raster import Scene, open_scene

    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    if block % 256 or block <= 0:
        raise ConfigError(f"block must be a positive multiple of 256, got {block}")
    if not isinstance(scene, Scene):
        scene = open_scene(scene)
    out_path = Path(out_path)
    inst_path = Path(instance_raster) if instance_raster is not None else None
    tmp_label = _atomic_target(out_path)
    tmp_inst = _atomic_target(inst_path) if inst_path is not None else None
    try:
        px_boxes, names = _read_boxes(scene, boxes, class_field, layer)
        class_ids, mapping = _class_ids(names, class_map)
        if not isinstance(engine, MaskEngine):
            engine = make_mask_engine(str(engine), device=device)
        results = masks_for_boxes(scene, px_boxes, engine, grid, simplify_px=0.0, multipart="all")
        keep = [i for i, r in enumerate(results) if r.geometry is not None]
        geoms = [results[i].geometry for i in keep]
        areas = np.array([results[i].area_px for i in keep], dtype=np.int64)
        idx = np.array(keep, dtype=np.int64)
        if order == "larger_first":
            rank = np.lexsort((idx, -areas))
        elif order == "smaller_first":
            rank = np.lexsort((idx, areas))
        else:
            rank = np.argsort(idx, kind="stable")
        paint_pos = np.empty(len(keep), dtype=np.int64)
        paint_pos[rank] = np.arange(len(keep))
        tree = STRtree(geoms) if geoms else None

        profile = {
            "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1,
            "crs": scene.crs, "transform": scene.transform, "tiled": True, "blockxsize": 256,
            "blockysize": 256, "compress": "DEFLATE", "BIGTIFF": "IF_SAFER",
        }
        labelled = 0
        with rasterio.open(tmp_label, "w", dtype="uint8", nodata=UNLABELLED, **profile) as dst, \
                _maybe_open(tmp_inst, dict(profile, dtype="uint32", nodata=0)) as idst:
            dst.update_tags(
                geors_classes=json.dumps(mapping, sort_keys=True), geors_mask_method=engine.method,
                geors_order=order, geors_unlabelled=str(UNLABELLED),
            )
            for r0 in range(0, scene.height, block):
                for c0 in range(0, scene.width, block):
                    win = Window(c0, r0, min(block, scene.width - c0), min(block, scene.height - r0))
                    wt = window_transform(win, scene.transform)
                    shape = (int(win.height), int(win.width))
                    hits = _window_hits(tree, win, scene.transform)
                    hits = hits[np.argsort(paint_pos[hits], kind="stable")] if len(hits) else hits
                    if len(hits):
                        lab = rasterize(((geoms[k], int(class_ids[idx[k]])) for k in hits), out_shape=shape,
                                        transform=wt, fill=UNLABELLED, dtype="uint8")
                    else:
                        lab = np.full(shape, UNLABELLED, dtype=np.uint8)
                    labelled += int((lab != UNLABELLED).sum())
                    dst.write(lab, 1, window=win)
                    if idst is not None:
                        if len(hits):
                            ins = rasterize(((geoms[k], int(idx[k]) + 1) for k in hits), out_shape=shape,
                                            transform=wt, fill=0, dtype="uint32")
                        else:
                            ins = np.zeros(shape, dtype=np.uint32)
                        idst.write(ins, 1, window=win)
        os.replace(tmp_label, out_path)
        if tmp_inst is not None and inst_path is not None:
            os.replace(tmp_inst, inst_path)
    finally:
        for t in (tmp_label, tmp_inst):
            if t is not None and t.exists():
                t.unlink()
    n_empty = len(results) - len(keep)
    if n_empty:
        log.warning("%d of %d boxes gave an empty mask and were not painted", n_empty, len(results))
    return LabelRasterReport(out_path, inst_path, mapping, len(results), n_empty, engine.method, labelled, order)


class _NullCtx:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _maybe_open(path: Path | None, profile: dict):
    import rasterio

    return rasterio.open(path, "w", **profile) if path is not None else _NullCtx()


def _window_hits(tree, win, transform) -> np.ndarray:
    if tree is None:
        return np.zeros(0, dtype=np.int64)
    from shapely.geometry import box as sbox

    from geors.tiling import window_bounds

    return np.asarray(tree.query(sbox(*window_bounds(win, transform)), predicate="intersects"), dtype=np.int64)


def _read_boxes(scene, boxes, class_field: str | None, layer: str | None) -> tuple[np.ndarray, list[str]]:
    """Boxes in scene pixels and their class names from a file, a LabelSet or arrays."""
    if isinstance(boxes, str | os.PathLike):
        from geors.io.labels import read_labels

        ls = read_labels(boxes, scene, class_field=class_field, layer=layer)
        names = list(ls.class_names) if class_field is not None else _default_names(ls)
        return np.asarray(ls.boxes, dtype=np.float64), names
    if hasattr(boxes, "boxes") and hasattr(boxes, "class_names"):
        return np.asarray(boxes.boxes, dtype=np.float64), [str(n) for n in boxes.class_names]
    if isinstance(boxes, tuple) and len(boxes) == 2:
        arr, names = boxes
        from geors.masks import _as_boxes

        b = _as_boxes(arr)
        if names is None:
            return b, ["0"] * len(b)
        names = [str(n) for n in names]
        if len(names) != len(b):
            raise LabelError(f"{len(b)} boxes but {len(names)} class names")
        return b, names
    raise LabelError("boxes must be a vector file path, a LabelSet or a (boxes, names) tuple")


def _default_names(ls) -> list[str]:
    # without an explicit class field read_labels uses a 'class'/'label' field when present,
    # else the single class "object" -> id 0
    names = [str(n) for n in ls.class_names]
    return ["0"] * len(names) if set(names) == {"object"} else names
