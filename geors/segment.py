"""Semantic segmentation: the C2FNet predictor, its pipeline stage and the class-raster writer.

* :class:`Segmenter` loads a C2FNet model file once and turns batches of tile
  pixels ``(B, C, H, W)`` float32 [0, 1] into uint8 class maps ``(B, H, W)``
  (255 where the pixel is not valid).
* :class:`SegmentStage` is the pipeline stage (``stage(scene, tiles, images)
  -> list[TileResult]``): it fills ``TileResult.class_raster`` only. It never
  clips to cores, polygonises, dissolves or writes: the pipeline does that with
  :func:`geors.merge.segment_polygons` and :func:`geors.merge.dissolve_groups`.
* :class:`ClassRasterWriter` writes a class GeoTIFF of the scene window by
  window from each tile's core (tiled, DEFLATE, colour table, class names in
  the ``geors_classes`` tag), to a temporary file renamed into place on
  :meth:`ClassRasterWriter.close`; the scene is never held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geors.errors import BandError, ConfigError, ModelError, OutputError
from geors.results import TileResult

__all__ = ["Segmenter", "SegmentStage", "ClassRasterWriter", "paint_class_raster",
           "DEFAULT_SEGMENTER", "NO_CLASS"]

log = logging.getLogger(__name__)

NO_CLASS = 255
DEFAULT_SEGMENTER = "c2fnet-neon-dota"

# Models loaded in this process (a Dask worker unpickles a fresh stage with every task).


class Segmenter:
    """C2FNet predictor: device, batching, inference mode.

    Create with :meth:`load`. Attributes: ``model``, ``meta``, ``classes``,
    ``colours``, ``bands``, ``tile_size``, ``overlap``, ``device``, ``name``,
    ``refine`` (False = coarse only, the ablation baseline).
    """

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: torch.device, refine: bool = True,
                 batch_size: int = 4):
        self.model = model.eval().to(device)
        self.meta = meta
        self.device = device
        self.refine = refine
        self.batch_size = max(1, int(batch_size))
        self.classes: list[str] = list(meta["classes"])
        self.colours: list[list[int]] = [list(c) for c in meta.get("colours") or []]
        self.bands: int = int(meta["bands"])
        self.tile_size: int = int(meta["tile_size"])
        self.overlap: int = int(meta.get("overlap", 0))
        self.name: str = str(meta.get("name") or Path(str(meta.get("path", "segmenter"))).stem)
        bg = meta.get("background")
        self.background_id: int | None = self.classes.index(bg) if bg in self.classes else None

    @classmethod
    def load(cls, name_or_path: str | os.PathLike | None = None, device: str = "auto", refine: bool = True,
             batch_size: int = 4) -> Segmenter:
        """Load a segmenter file or built-in name (None = the default segmenter)."""
        from geors.device import resolve_device
        from geors.models.registry import load_model

        dev = resolve_device(device)
        model, meta = load_model(DEFAULT_SEGMENTER if name_or_path is None else name_or_path, dev)
        if meta.get("architecture") != "c2fnet":
            raise ModelError(f"{meta.get('path')}: a {meta.get('architecture')} model, not a segmenter; pass a "
                             "C2FNet model (geors train segmenter) to --segmenter.")
        log.info("loaded segmenter %s (%s) on %s", meta.get("path"), ", ".join(meta["classes"]), dev)
        return cls(model, meta, dev, refine, batch_size)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, K, H, W)`` float32 of ``(B, C, H, W)`` float32 images in [0, 1]."""
        return self._run(images, probs=True)

    def predict(self, images: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """uint8 class ids ``(B, H, W)``; 255 where ``valid`` ``(B, H, W)`` is False."""
        out = self._run(images, probs=False)
        if valid is not None:
            out[~np.asarray(valid, bool).reshape(out.shape)] = NO_CLASS
        return out

    def _run(self, images: np.ndarray, probs: bool) -> np.ndarray:
        arr = np.asarray(images, np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W) float32, got shape {arr.shape}")
        if arr.shape[1] != self.bands:
            raise BandError(f"segmenter {self.name} was trained on {self.bands}-band images but the tiles have "
                            f"{arr.shape[1]} band(s); select {self.bands} bands (--bands) or use a segmenter "
                            f"trained for {arr.shape[1]}.")
        outs = []
        with torch.inference_mode():
            for i in range(0, arr.shape[0], self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(arr[i:i + self.batch_size])).to(self.device)
                p = self.model(x, refine=self.refine)
                outs.append(p.float().cpu().numpy() if probs else p.argmax(1).to(torch.uint8).cpu().numpy())
        return np.concatenate(outs)


class SegmentStage:
    """C2FNet as a pipeline stage: fills ``TileResult.class_raster`` (uint8 (H, W), 255 = no class).

    Callable both as ``stage(batch)`` with a :class:`geors.stage_contract.TileBatch` and
    as ``stage(scene, tiles, images)``. It never clips to cores, polygonises,
    dissolves or writes.

    The segmenter's background class (model metadata ``background``, set by
    ``geors train segmenter --background``) is returned as 255 ("no class"):
    background usually covers most of a scene as one connected region, and
    one feature per connected region would make it a single polygon with a
    hole for every object, whose size grows with the scene. Objects and
    land-cover classes are polygonised; ``keep_background=True`` keeps it.

    Args:
        segmenter: model name or path (None = :data:`DEFAULT_SEGMENTER`), or a
            config object with a ``segmenter`` attribute (``geors.config.SegmentConfig``).
        device: ``auto``, ``cpu`` or ``cuda``.
        refine: False runs the coarse network only.
        batch_size: tiles per forward pass.
    """

    name = "segment"
    layers: tuple[str, ...] = ("segmentation",)
    skip_nodata = True

    def __init__(self, segmenter=None, device: str = "auto", refine: bool = True, batch_size: int = 4,
                 keep_background: bool = False):
        self.config = segmenter if hasattr(segmenter, "segmenter") else None
        self.spec = self.config.segmenter if self.config is not None else segmenter
        self.device = device
        self.refine = refine
        self.batch_size = batch_size
        self.keep_background = keep_background
        self._seg: Segmenter | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_seg"] = None
        return state

    @property
    def segmenter(self) -> Segmenter:
        if self._seg is None:
            from geors.stage_contract import load_once

            self._seg = load_once(("segmenter", str(self.spec), self.device, self.refine, self.batch_size),
                                  lambda: Segmenter.load(self.spec, device=self.device, refine=self.refine,
                                                         batch_size=self.batch_size))
        return self._seg

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.segmenter.classes)

    @property
    def colours(self) -> list[list[int]]:
        return self.segmenter.colours

    def default_tiling(self) -> tuple[int, int]:
        """(tile size, overlap) in pixels the segmenter was trained for."""
        return self.segmenter.tile_size, self.segmenter.overlap

    def tile_inputs(self, scene, tiles) -> None:
        return None

    def prepare(self, scenes: Sequence) -> None:
        """Load the model and check every scene (main process, before any output is touched)."""
        from geors.models.registry import fit_message, fit_warnings

        for sc in scenes:
            self.check_scene(sc)
        for sc in scenes:  # before any output exists: what runs but does not fit the segmenter
            if fit_warnings(sc, self.segmenter.meta, "segmenter"):
                log.warning(fit_message(sc, self.segmenter.meta, "segmenter"))

    def check_scene(self, scene) -> None:
        """Fail before anything is written when the segmenter does not fit the scene's bands."""
        seg = self.segmenter
        if scene.channels != seg.bands:
            raise BandError(
                f"{scene.path}: segmenter {seg.name} expects {seg.bands} band(s) but geors would feed "
                f"{scene.channels} (bands {list(scene.band_indexes)}). Choose {seg.bands} bands with --bands "
                f"or train a segmenter on these bands.")

    def describe(self) -> dict:
        from geors.models.registry import file_sha256

        seg = self.segmenter
        path = seg.meta.get("path")
        # "segmenter*" keys, not "model*": the pipeline flattens the describe() of stage groups
        # (detect + segment) into one dict, where the detector owns "model", "model_sha256" and "classes"
        return {"segmenter": seg.name, "segmenter_sha256": file_sha256(path) if path else None,
                "segmenter_classes": list(seg.classes), "segmenter_colours": seg.colours,
                "small_classes": seg.meta.get("small_classes"), "refine": self.refine,
                "background": None if self.keep_background else seg.meta.get("background"),
                "aggregation": seg.model.config.aggregation}

    def __call__(self, scene_or_batch, tiles: Sequence | None = None, images: Sequence | None = None
                 ) -> list[TileResult]:
        if tiles is None:  # a TileBatch
            scene, tiles, images = scene_or_batch.scene, scene_or_batch.tiles, scene_or_batch.images
        else:
            scene = scene_or_batch
        t0 = time.perf_counter()
        seg = self.segmenter
        x = np.stack([img.image for img in images])
        valid = np.stack([img.valid for img in images])
        classes = seg.predict(x, valid)
        if seg.background_id is not None and not self.keep_background:
            classes[classes == seg.background_id] = NO_CLASS
        per_tile = (time.perf_counter() - t0) / max(len(tiles), 1)
        return [TileResult(scene.name, tile.id, tile.window, "done", seconds=per_tile,
                           class_raster=cr[: tile.height, : tile.width], stage_seconds={"segment": per_tile})
                if "stage_seconds" in TileResult.__dataclass_fields__ else
                TileResult(scene.name, tile.id, tile.window, "done", seconds=per_tile,
                           class_raster=cr[: tile.height, : tile.width])
                for tile, cr in zip(tiles, classes, strict=True)]


class ClassRasterWriter:
    """Class GeoTIFF of a scene written window by window from tile cores.

    uint8, same grid and CRS as the scene, tiled 256 x 256, DEFLATE, nodata
    255, a colour table from ``colours``, class names in the ``geors_classes``
    tag (JSON ``{"name": id}``, like ``geors label``). Pixels no tile wrote stay
    255. Written to a temporary file in the destination directory; :meth:`close`
    renames it into place, :meth:`abort` deletes it.

    Args:
        path: output ``.tif``.
        scene: the :class:`geors.raster.Scene` (grid, CRS).
        classes: class names, id order.
        colours: RGB per class (None = no colour table).
    """

    def __init__(self, path: str | os.PathLike, scene, classes: Sequence[str],
                 colours: Sequence[Sequence[int]] | None = None):
        import rasterio

        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise OutputError(f"{self.path}: the output directory {parent} does not exist; create it first.")
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory; give a .tif file path.")
        if len(classes) > 255:
            raise ConfigError(f"{len(classes)} classes do not fit a uint8 class raster (255 = no class).")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp.tif", dir=parent)
        os.close(fd)
        self._tmp = Path(tmp)
        profile = {"driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1, "dtype": "uint8",
                   "crs": scene.crs, "transform": scene.transform, "tiled": True, "blockxsize": 256,
                   "blockysize": 256, "compress": "DEFLATE", "nodata": NO_CLASS, "BIGTIFF": "IF_SAFER"}
        self._ds = rasterio.open(self._tmp, "w", **profile)
        self._ds.update_tags(geors_classes=json.dumps({str(n): i for i, n in enumerate(classes)}),
                             geors_nodata=str(NO_CLASS))
        if colours:
            cmap = {i: tuple(int(v) for v in c[:3]) + (255,) for i, c in enumerate(colours)}
            cmap[NO_CLASS] = (0, 0, 0, 0)
            self._ds.write_colormap(1, cmap)
        self.pixels_written = 0

    def write(self, tile, class_raster: np.ndarray) -> None:
        """Write the core of ``tile`` from its tile-local ``class_raster`` (uint8 (H, W))."""
        core = tile.core_in_tile
        r0, c0 = int(core.row_off), int(core.col_off)
        block = np.asarray(class_raster, np.uint8)[r0:r0 + int(core.height), c0:c0 + int(core.width)]
        self._ds.write(block, 1, window=tile.core)
        self.pixels_written += block.size

    def write_window(self, window, classes: np.ndarray) -> None:
        """Write uint8 class ids for a scene pixel window."""
        self._ds.write(np.asarray(classes, np.uint8), 1, window=window)
        self.pixels_written += int(np.asarray(classes).size)

    def close(self) -> Path:
        """Finish the file and move it into place; returns the path."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private; give it a normal file's mode
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (nothing is left at ``path``)."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort()
        return False


def raster_paths(raster_out: str | os.PathLike | None, scenes: Sequence) -> dict[str, Path]:
    """Scene name -> class GeoTIFF path: ``raster_out`` for one scene, ``<stem>_<scene stem>.tif`` for several."""
    if raster_out is None:
        return {}
    base = Path(raster_out)
    if len(scenes) == 1:
        return {scenes[0].name: base}
    return {sc.name: base.with_name(f"{base.stem}_{Path(sc.name).stem}{base.suffix or '.tif'}") for sc in scenes}


def paint_class_raster(gpkg: str | os.PathLike, scene, out: str | os.PathLike, classes: Sequence[str],
                       colours: Sequence[Sequence[int]] | None = None, layer: str = "segmentation",
                       block: int = 1024) -> Path:
    """Class GeoTIFF of ``scene`` painted from its polygons in a GeoPackage ``segmentation`` layer.

    Window by window: each window reads only the polygons that intersect it
    (spatial index) and rasterises them (pixel-centre rule; the polygons are
    pixel-aligned in the scene CRS, so the result equals the class raster the
    tiles' cores produced). A layer in another CRS is reprojected on the fly.
    Written through :class:`ClassRasterWriter` (temporary file, renamed at the end).

    Args:
        gpkg: GeoPackage written by the pipeline.
        scene: the :class:`geors.raster.Scene` (grid, CRS, name).
        out: GeoTIFF to write.
        classes: class names, id order (the segmenter's).
        colours: RGB per class.
        layer: the segmentation layer.
        block: window side in pixels.

    Returns:
        The written path.
    """
    import pyogrio
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from geors.crs import bounds_in, same_crs
    from geors.tiling import window_bounds

    index = {str(n): i for i, n in enumerate(classes)}
    where = "scene = '" + scene.name.replace("'", "''") + "'"
    layer_crs = pyogrio.read_info(gpkg, layer=layer).get("crs")
    writer = ClassRasterWriter(out, scene, classes, colours)
    try:
        for r0 in range(0, scene.height, block):
            for c0 in range(0, scene.width, block):
                win = Window(c0, r0, min(block, scene.width - c0), min(block, scene.height - r0))
                shape = (int(win.height), int(win.width))
                bounds = window_bounds(win, scene.transform)
                df = pyogrio.read_dataframe(gpkg, layer=layer, where=where,
                                            bbox=bounds_in(bounds, scene.crs, layer_crs), columns=["class"])
                if len(df) and layer_crs and not same_crs(layer_crs, scene.crs):
                    df = df.to_crs(scene.crs.to_wkt())
                pairs = [(g, index[c]) for g, c in zip(df.geometry.to_numpy(), df["class"].astype(str), strict=True)
                         if c in index and g is not None]
                arr = (rasterize(pairs, out_shape=shape, transform=window_transform(win, scene.transform),
                                 fill=NO_CLASS, dtype="uint8") if pairs else np.full(shape, NO_CLASS, np.uint8))
                writer.write_window(win, arr)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
