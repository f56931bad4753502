"""SAMRS labelling: boxes -> instance masks -> a semantic label raster aligned with the scene.

The recipe of SAMRS (Wang et al., 2023) as a GIS tool:

1. Boxes come from any vector file OGR reads, in any CRS (reprojected to the
   scene CRS by :func:`geors.io.box_labels.read_labels`), or from arrays. A
   rotated box becomes its circumscribed horizontal box (RH-box), the prompt
   SAMRS recommends for rotated-box labels.
2. Each box is turned into a mask by a mask engine (SAM, the weight-free
   engine, GrabCut or the box itself, see :mod:`geors.masks`) through the
   pipeline (:class:`geors.stages.BoxMasksStage`): each tile is read once, the
   masks go to the ``instances`` layer of a GeoPackage beside the label raster
   (``LABELS.masks.gpkg``) batch by batch with the tile ledger, so an
   interrupted run resumes and memory does not grow with the number of boxes.
3. The label raster is rasterised from that layer window by window (never
   the whole scene in memory): uint8, same width/height/transform/CRS as the
   scene, tiled 256 x 256, DEFLATE; 255 = unlabelled (also set as nodata),
   otherwise the class id (0..254).

Overlapping instances: instances are painted in order, later ones overwrite
earlier ones. ``order="larger_first"`` (default) paints larger masks first so
small objects on top of large ones stay visible; ``"smaller_first"`` is the
reverse; ``"input"`` keeps the order the masks were written (tile by tile, file
order within a tile). Ties keep that order.

The optional instance raster (uint32, same grid, 0 = no instance) holds the
``fid`` of each instance in the masks GeoPackage, with the same overwrite
order, so a pixel leads back to its polygon.

Class ids: with ``class_map`` (a dict, or a JSON ``{"name": id}`` / CSV
``name,id`` file) names map to the given ids. Without it, when every class
value is an integer in 0..254 the value itself is the id; otherwise the sorted
unique names get ids 0..K-1. Without a class field every box is class 0. The
mapping used is stored in the TIFF metadata tag ``geors_classes`` (JSON).

Rasters are written to a temporary file in the destination directory and
renamed into place, so an existing file is never left half written; an
existing raster is only replaced with ``overwrite=True``, and an input scene
never.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geors.errors import ConfigError, LabelError

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
        n_boxes: boxes read from the file (also those no outline answers).
        n_empty: boxes that overlap the scene but got no outline (an empty mask; nothing painted).
        unanswered: every box without an outline, by id in its file, with the reason
            (``empty mask``, ``outside the scene``, ...) and its attributes (JSON) when known.
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
    masks_path: Path | None = None
    summary: object = None  # the masks run's geors.pipeline.RunSummary
    unanswered: list[dict] | None = None

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
            "masks_path": str(self.masks_path) if self.masks_path else None,
            "boxes_unanswered": self.unanswered or [],
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


def _raster_values(names: list[str], class_map) -> dict[str, int]:
    """The label raster's value of each class name (0..254; 255 = unlabelled): the class map's, the
    names themselves when every name is an integer, else the names in sorted order from 0."""
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
    return mapping


def _normal_mode(path: Path) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) a normal file's mode: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _atomic_target(out: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.tif", dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    return Path(tmp)


def write_label_raster(
    scene,
    boxes,
    out_path: str | os.PathLike,
    class_field: str | None = None,
    class_map: Mapping[str, int] | str | os.PathLike | None = None,
    engine: str = "auto",
    instance_raster: str | os.PathLike | None = None,
    order: str = "larger_first",
    *,
    masks_path: str | os.PathLike | None = None,
    config=None,
    layer: str | None = None,
    block: int = 1024,
    overwrite: bool = False,
    progress=None,
    cancel=None,
) -> LabelRasterReport:
    """Write a SAMRS-style semantic label raster (and optionally instance ids) for a scene.

    Args:
        scene: a :class:`geors.raster.Scene` or a raster path.
        boxes: a vector file path (boxes/polygons in any CRS), a
            :class:`geors.io.box_labels.LabelSet`, or a tuple ``(boxes, names)``
            with (N, 4) scene pixel boxes xyxy (or (N, 4, 2) rotated corners)
            and N class names (or None).
        out_path: label GeoTIFF to write.
        class_field: attribute holding the class (vector input).
        class_map: name -> id mapping, or a JSON/CSV file of it (ids 0..254).
        engine: mask engine spec (``auto``, ``vit_b``, ``watershed``, ``grabcut``,
            ``box``, a checkpoint path...); ignored when ``config`` is given.
        instance_raster: optional uint32 instance-id GeoTIFF to write.
        order: ``larger_first`` | ``smaller_first`` | ``input`` (see module doc).
        masks_path: the masks GeoPackage (default ``<out>.masks.gpkg``); with
            ``config.output.resume`` an interrupted run continues from it.
        config: a :class:`geors.config.PipelineConfig` for the masks run
            (tiling, execution, resume); default: box masks config with ``engine``.
        layer: layer of a multi-layer vector file.
        block: output window size in pixels (multiple of 256).
        overwrite: replace existing output rasters.
        progress, cancel: as for :func:`geors.pipeline.process_scenes`.

    Returns:
        A :class:`LabelRasterReport` (``summary`` holds the masks run's summary).

    Raises:
        LabelError: unreadable/empty boxes, unknown classes, ids outside 0..254.
        OutputError: output is the input, exists (without overwrite), directory missing.
        ConfigError: unknown ``order``.
    """
    from geors.config import MaskConfig, OutputConfig, PipelineConfig
    from geors.pipeline import process_scenes
    from geors.raster import Scene, open_scene
    from geors.stages import BoxMasksStage

    if order not in ORDERS:
        raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
    if block % 256 or block <= 0:
        raise ConfigError(f"block must be a positive multiple of 256, got {block}")
    if not isinstance(scene, Scene):
        scene = open_scene(scene)
    out_path = Path(out_path)
    inst_path = Path(instance_raster) if instance_raster is not None else None
    from geors.outputs import check_raster_output

    check_raster_output(out_path, scene.path, overwrite)
    if inst_path is not None:
        check_raster_output(inst_path, scene.path, overwrite, "--instances")
    masks_path = Path(masks_path) if masks_path is not None else out_path.with_name(out_path.stem + ".masks.gpkg")
    if config is None:
        config = PipelineConfig(detect=None, masks=MaskConfig(engine=str(engine), simplify_px=0.0, multipart="all"),
                                output=OutputConfig(overwrite=overwrite))
    if config.masks is None:
        raise ConfigError("write_label_raster needs a configuration with a [masks] section")
    # class ids must be decidable before the long part runs
    from geors.io.box_labels import as_labelset

    ls = as_labelset(boxes, scene, class_field=class_field, layer=layer, min_visible=0.0)
    mapping = _raster_values([str(n) for n in ls.class_names], class_map)
    stage = BoxMasksStage(ls, config.masks, device=config.execution.device)
    summary = process_scenes([scene], masks_path, stage, config, progress=progress, cancel=cancel, command="label")
    report = rasterize_instances(scene, masks_path, out_path, mapping, inst_path, order, block)
    n_written = report.n_boxes  # instances of this scene in the masks GeoPackage
    report.n_boxes = len(ls) + len(ls.dropped)
    report.n_empty = max(0, len(ls) - n_written)
    report.unanswered = _unanswered(ls, summary)
    if report.unanswered:
        from geors.stages import unanswered_message

        log.warning("%d of %d boxes got no outline and were not painted: %s", len(report.unanswered),
                    report.n_boxes, unanswered_message(report.unanswered, n=10))
    report.summary = summary
    report.masks_path = masks_path
    return report


def _unanswered(ls, summary) -> list[dict]:
    """Boxes without an outline: left out for the scene (by reason) and those this run found no mask for."""
    out = {int(f): {"box_fid": int(f), "reason": r, "attributes": None} for f, r in ls.dropped}
    attrs = dict(zip((int(f) for f in ls.fids), ls.attributes, strict=True)) if (
        ls.fids is not None and ls.attributes is not None) else {}
    for u in getattr(summary, "boxes_unanswered", None) or []:
        f = int(u["box_fid"])
        out.setdefault(f, {"box_fid": f, "reason": u["reason"], "attributes": attrs.get(f)})
    return [out[f] for f in sorted(out)]


def rasterize_instances(scene, masks_path: Path, out_path: Path, mapping: dict[str, int],
                        inst_path: Path | None = None, order: str = "larger_first",
                        block: int = 1024) -> LabelRasterReport:
    """Paint a scene's ``instances`` (from a GeoPackage) into a label raster, window by window.

    Each window reads only the instances that intersect it (GeoPackage spatial
    index) and paints them in a scene-wide consistent order (area, then fid),
    so windows agree along their edges.
    """
    import pyogrio
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from geors.crs import bounds_in, same_crs
    from geors.tiling import window_bounds

    where = "scene = '" + scene.name.replace("'", "''") + "'"
    profile = {
        "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1,
        "crs": scene.crs, "transform": scene.transform, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "compress": "DEFLATE", "BIGTIFF": "IF_SAFER",
    }
    tmp_label = _atomic_target(out_path)
    tmp_inst = _atomic_target(inst_path) if inst_path is not None else None
    labelled = 0
    n_instances = 0
    method = ""
    try:
        info = pyogrio.read_info(masks_path, layer="instances")
        layer_crs = info.get("crs")
        with rasterio.open(tmp_label, "w", dtype="uint8", nodata=UNLABELLED, **profile) as dst, \
                _maybe_open(tmp_inst, dict(profile, dtype="uint32", nodata=0)) as idst:
            dst.update_tags(geors_classes=json.dumps(mapping, sort_keys=True), geors_order=order,
                            geors_unlabelled=str(UNLABELLED), geors_masks=str(masks_path))
            for r0 in range(0, scene.height, block):
                for c0 in range(0, scene.width, block):
                    win = Window(c0, r0, min(block, scene.width - c0), min(block, scene.height - r0))
                    wt = window_transform(win, scene.transform)
                    shape = (int(win.height), int(win.width))
                    bounds = window_bounds(win, scene.transform)
                    df = pyogrio.read_dataframe(masks_path, layer="instances", where=where,
                                                bbox=bounds_in(bounds, scene.crs, layer_crs), fid_as_index=True,
                                                columns=["class", "area_m2", "mask_method"])
                    if len(df) and layer_crs and not same_crs(layer_crs, scene.crs):
                        df = df.to_crs(scene.crs.to_wkt())
                    lab = np.full(shape, UNLABELLED, dtype=np.uint8)
                    ins = np.zeros(shape, dtype=np.uint32) if idst is not None else None
                    if len(df):
                        method = method or str(df["mask_method"].iloc[0])
                        unknown = sorted(set(df["class"].astype(str)) - set(mapping))
                        if unknown:
                            raise LabelError(f"{masks_path}: classes {unknown} are not in the class map {mapping}.")
                        fids = df.index.to_numpy()
                        area = df["area_m2"].to_numpy(dtype=np.float64)
                        if order == "larger_first":
                            rank = np.lexsort((fids, -area))
                        elif order == "smaller_first":
                            rank = np.lexsort((fids, area))
                        else:
                            rank = np.argsort(fids, kind="stable")
                        geoms = df.geometry.to_numpy()[rank]
                        cls = df["class"].astype(str).to_numpy()[rank]
                        lab = rasterize(((g, mapping[c]) for g, c in zip(geoms, cls, strict=True)),
                                        out_shape=shape, transform=wt, fill=UNLABELLED, dtype="uint8")
                        if ins is not None:
                            ins = rasterize(((g, int(f)) for g, f in zip(geoms, fids[rank], strict=True)),
                                            out_shape=shape, transform=wt, fill=0, dtype="uint32")
                    labelled += int((lab != UNLABELLED).sum())
                    dst.write(lab, 1, window=win)
                    if idst is not None:
                        idst.write(ins, 1, window=win)
            dst.update_tags(geors_mask_method=method)
        import sqlite3

        con = sqlite3.connect(f"file:{masks_path}?mode=ro", uri=True)
        try:
            n_instances = int(con.execute('SELECT count(*) FROM "instances" WHERE scene = ?',
                                          (scene.name,)).fetchone()[0])
        finally:
            con.close()
        _normal_mode(tmp_label)
        os.replace(tmp_label, out_path)
        if tmp_inst is not None and inst_path is not None:
            _normal_mode(tmp_inst)
            os.replace(tmp_inst, inst_path)
    finally:
        for t in (tmp_label, tmp_inst):
            if t is not None and t.exists():
                t.unlink()
    return LabelRasterReport(out_path, inst_path, mapping, n_instances, 0, method, labelled, order)


def _maybe_open(path: Path | None, profile: dict):
    import rasterio

    return rasterio.open(path, "w", **profile) if path is not None else contextlib.nullcontext()
