"""Training of the C2FNet segmenter from scenes and label rasters or polygon layers.

Labels (per scene):

* a **label raster** (e.g. from ``geors label``): uint8 class ids, 255 =
  unlabelled (ignored). Class names come from ``--classes`` or the raster's
  ``geors_classes`` tag (JSON ``{"name": id}``). A raster on another grid or in
  another CRS is reprojected on the fly to the scene grid (nearest neighbour,
  window by window through a GDAL warped VRT); one without a CRS for a scene
  with one (or the reverse) is refused with both CRSs named.
* a **polygon layer** in any OGR format and any CRS (reprojected to the scene
  CRS), classes from ``class_field`` (or a ``class``/``label`` field). It is
  rasterised window by window; smaller polygons are painted last so they stay
  visible where polygons overlap.

``background``: pixels no label covers (255 in a raster, outside every
polygon) are class ``background`` instead of ignored, for labels that mark
objects only (boxes -> masks). Without it they are ignored (255).

Only labelled windows of the scenes are loaded (``tile`` px windows holding at
least one label pixel), so memory follows the labelled area, not the scene.

Schedule (the paper's): the coarse network is trained first (cross-entropy,
255 ignored), then frozen; the fine binary network is trained on windows
selected from the frozen coarse prediction (the window statistic, top-n,
stride 32) with target 1 on small-class pixels. geors adds one window centred
on a random ground-truth small-object pixel per crop when there is one
(``fine_gt_windows``), so the fine net sees objects the young coarse net
misses entirely; with a well-trained coarse net the selected windows hold
them anyway.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geors.errors import ConfigError, LabelError
from geors.models.c2fnet import C2FNet, C2FNetConfig, crop_windows, select_windows

__all__ = [
    "SegTile",
    "SegTrainConfig",
    "LabelSource",
    "open_label_source",
    "load_training_tiles",
    "train_segmenter",
    "DEFAULT_COLOURS",
    "default_colours",
    "is_raster_path",
]

log = logging.getLogger(__name__)

IGNORE = 255
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png"}

DEFAULT_COLOURS = [
    (0, 0, 0), (34, 139, 34), (230, 25, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
]


def default_colours(n: int) -> list[list[int]]:
    """``n`` RGB colours for class ids 0..n-1 (a fixed palette, then a deterministic spread)."""
    out = [list(c) for c in DEFAULT_COLOURS[:n]]
    rng = np.random.default_rng(7)
    while len(out) < n:
        out.append([int(v) for v in rng.integers(0, 256, 3)])
    return out


def is_raster_path(path: str | Path) -> bool:
    """Whether a labels path is a raster (by suffix; vector formats otherwise)."""
    return Path(path).suffix.lower() in RASTER_SUFFIXES


@dataclass
class SegTile:
    """One labelled training window: ``image`` (C, H, W) float32 [0, 1], ``label`` (H, W) uint8 (255 ignored)."""

    image: np.ndarray
    label: np.ndarray
    name: str = ""


# ----------------------------------------------------------------------------- label sources
class LabelSource:
    """Labels of one scene readable window by window on the scene grid.

    Attributes:
        path: the labels file.
        names: class name -> id in this source's own numbering.
    """

    path: Path
    names: dict[str, int]

    def read(self, window) -> np.ndarray:  # pragma: no cover - interface
        """uint8 ``(h, w)`` class ids of a scene window (255 = no label)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _crs_text(crs) -> str:
    if crs is None:
        return "(no CRS)"
    try:
        return crs.to_string() or crs.to_wkt()[:80]
    except Exception:  # noqa: BLE001 - any CRS object
        return str(crs)[:80]


class _RasterLabels(LabelSource):
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
                f"{path}: the label raster's CRS is {_crs_text(src.crs)} but the scene {scene.path} has "
                f"{_crs_text(scene_crs)}; labels cannot be placed on the scene. Assign the right CRS to the "
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
                            "(nearest neighbour)", path, _crs_text(src.crs), _crs_text(scene_crs))
            try:
                self._ds = WarpedVRT(src, crs=scene_crs, transform=scene.transform, width=scene.width,
                                     height=scene.height, resampling=rasterio.enums.Resampling.nearest,
                                     nodata=IGNORE, src_nodata=src.nodata if src.nodata is not None else IGNORE)
            except Exception as exc:  # noqa: BLE001
                self._src.close()
                raise LabelError(f"{path}: cannot reproject the labels from {_crs_text(src.crs)} to the scene CRS "
                                 f"{_crs_text(scene_crs)} ({exc}); reproject them with gdalwarp.") from None
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
    def __init__(self, path: Path, scene, class_field: str | None, layer: str | None):
        import pyogrio
        import shapely

        from geors.crs import same_crs
        from geors.io.labels import DEFAULT_CLASS_FIELDS, reproject_labels

        self.path = path
        try:
            gdf = pyogrio.read_dataframe(path, layer=layer)
        except Exception as exc:  # noqa: BLE001
            raise LabelError(f"{path}: cannot read it as a polygon layer ({exc}); pass a GeoPackage, GeoJSON, "
                             "Shapefile or a label raster (.tif).") from None
        if len(gdf) == 0 or "geometry" not in gdf.columns:
            raise LabelError(f"{path}: no polygons in the layer; add labels or pass another file/layer.")
        fields = [c for c in gdf.columns if c != "geometry"]
        if class_field is not None and class_field not in fields:
            raise LabelError(f"{path}: no field {class_field!r}; available fields: {', '.join(fields) or '(none)'}.")
        fld = class_field or next((f for f in fields if f.lower() in DEFAULT_CLASS_FIELDS), None)
        geoms = gdf.geometry.to_numpy()
        keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
        keep &= shapely.area(geoms) > 0 if keep.any() else keep
        if not keep.any():
            raise LabelError(f"{path}: no feature has an area; segmentation labels must be polygons.")
        names = ["object"] * len(gdf) if fld is None else [str(v) for v in gdf[fld]]
        if fld is not None and gdf[fld].isna().any():
            raise LabelError(f"{path}: features without a value in {fld!r}; fill it or choose another --class-field.")
        layer_crs, scene_crs = gdf.crs, scene.crs
        if (layer_crs is None) != (scene_crs is None):
            raise LabelError(f"{path}: the layer's CRS is {_crs_text(layer_crs)} but the scene {scene.path} has "
                             f"{_crs_text(scene_crs)}; assign the right CRS to the layer (ogr2ogr -a_srs ...).")
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
                      layer: str | None = None) -> LabelSource:
    """A :class:`LabelSource` for a label raster or a polygon layer (decided by the suffix)."""
    p = Path(path)
    if not p.exists():
        raise LabelError(f"{p}: labels file not found.")
    if is_raster_path(p):
        return _RasterLabels(p, scene, classes)
    return _PolygonLabels(p, scene, class_field, layer)


def load_training_tiles(
    sources: Sequence[tuple[object, str | Path]],
    class_field: str | None = None,
    classes: Sequence[str] | None = None,
    background: str | None = None,
    tile: int = 512,
    bands: Sequence[int] | None = None,
    allow_ungeoreferenced: bool = False,
) -> tuple[list[SegTile], list[str], dict[str, Any]]:
    """Read the labelled windows of every (scene, labels) pair, in one class numbering.

    Args:
        sources: pairs of a scene (path or :class:`geors.raster.Scene`) and its labels path.
        class_field: class attribute of polygon labels.
        classes: class names in id order for label rasters (overrides their tags).
        background: name of the class for unlabelled pixels (None = ignored).
        tile: window side in pixels.
        bands: 1-based bands of the scenes.
        allow_ungeoreferenced: accept images without CRS (labels must then be on the same pixel grid).

    Returns:
        ``(tiles, class names, info)`` where info has ``sources``, ``gsd_m``, ``band_indexes``,
        ``bands``, ``stretch`` and ``label_pixels`` per class.

    Raises:
        LabelError: unreadable labels, misaligned grids, class ids missing from the class list,
            no labelled pixel at all.
    """
    from rasterio.windows import Window

    from geors.raster import Scene, open_scene

    global_names: list[str] = [background] if background else []
    tiles: list[SegTile] = []
    info: dict[str, Any] = {"sources": [], "gsd_m": None, "band_indexes": None, "stretch": []}
    for scene_in, labels in sources:
        scene = scene_in if isinstance(scene_in, Scene) else open_scene(
            scene_in, bands=list(bands) if bands else None, allow_ungeoreferenced=allow_ungeoreferenced)
        src = open_label_source(labels, scene, class_field=class_field, classes=classes)
        try:
            lut = np.full(256, IGNORE, np.uint8)
            for name, i in src.names.items():
                if name not in global_names:
                    global_names.append(name)
                lut[i] = global_names.index(name)
            known = set(src.names.values())
            n0 = len(tiles)
            for r0 in range(0, scene.height, tile):
                for c0 in range(0, scene.width, tile):
                    win = Window(c0, r0, min(tile, scene.width - c0), min(tile, scene.height - r0))
                    raw = src.read(win)
                    present = np.unique(raw)
                    unknown = [int(v) for v in present if v != IGNORE and int(v) not in known]
                    if unknown:
                        raise LabelError(
                            f"{labels}: class ids {unknown} are in the raster but not in its class list "
                            f"{src.names}; pass the full list with --classes or fix the labels.")
                    lab = lut[raw]
                    img = scene.read_window(win)
                    if background:
                        lab[(raw == IGNORE) & img.valid] = global_names.index(background)
                    lab[~img.valid] = IGNORE
                    if (lab != IGNORE).any():
                        tiles.append(SegTile(img.image, lab, f"{scene.name}:{r0}:{c0}"))
            if len(tiles) == n0:
                raise LabelError(f"{labels}: no labelled pixel over the scene {scene.path}; check that the labels "
                                 "cover the scene (CRS, extent) or pass --background.")
        finally:
            src.close()
        if info["band_indexes"] is None:
            info["band_indexes"] = list(scene.band_indexes)
            info["bands"] = scene.channels
            info["gsd_m"] = scene.gsd_m
        elif scene.channels != info["bands"]:
            raise LabelError(f"{scene.path}: {scene.channels} band(s) but the first training scene has "
                             f"{info['bands']}; train on scenes with the same bands (--bands).")
        info["sources"].append({"scene": str(scene.path), "labels": str(labels), "gsd_m": scene.gsd_m,
                                "classes": src.names})
        info["stretch"].append(scene.stats.to_dict())
    counts = np.zeros(len(global_names), np.int64)
    for t in tiles:
        v = t.label[t.label != IGNORE]
        counts += np.bincount(v, minlength=len(global_names))[: len(global_names)]
    info["label_pixels"] = {n: int(c) for n, c in zip(global_names, counts, strict=True)}
    return tiles, global_names, info


# ----------------------------------------------------------------------------- training
@dataclass
class SegTrainConfig:
    """Options of :func:`train_segmenter` (sizes in pixels).

    Attributes:
        coarse_steps, fine_steps: optimiser steps of each phase.
        batch_size: crops per step.
        crop_size: side of the training crops.
        small_fraction: share of crops centred on a small-object pixel.
        lr, weight_decay, warmup_steps: AdamW, linear warm-up, cosine decay.
        fine_windows: top-n windows per crop in fine training (selected from the frozen coarse prediction).
        fine_gt_windows: extra windows per crop centred on a ground-truth small-object pixel.
        color_jitter: per-band gain / gamma jitter strength.
        max_seconds: wall-clock budget for both phases (split in proportion to their steps).
        device, seed, log_every: as for the detector.
        arch: :class:`C2FNetConfig` fields (variant, window, window_stride, top_n, zoom, aggregation...).
    """

    coarse_steps: int = 600
    fine_steps: int = 400
    batch_size: int = 4
    crop_size: int = 256
    small_fraction: float = 0.5
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    fine_windows: int = 2
    fine_gt_windows: int = 1
    color_jitter: float = 0.1
    max_seconds: float | None = None
    device: str = "auto"
    seed: int = 0
    log_every: int = 20
    arch: dict[str, Any] = field(default_factory=dict)


class _Sampler:
    def __init__(self, tiles: Sequence[SegTile], small_ids: Sequence[int], rng: np.random.Generator):
        self.tiles = tiles
        self.rng = rng
        lut = np.zeros(256, bool)
        lut[list(small_ids)] = True
        self.small_px: list[np.ndarray] = []
        for t in tiles:
            ys, xs = np.nonzero(lut[t.label])
            pts = np.column_stack([ys, xs])
            if len(pts) > 20000:
                pts = pts[rng.choice(len(pts), 20000, replace=False)]
            self.small_px.append(pts)
        self.with_small = [i for i, p in enumerate(self.small_px) if len(p)]
        self.small_lut = lut

    def crop(self, side: int, small: bool) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if small and self.with_small:
            i = self.with_small[int(rng.integers(len(self.with_small)))]
            y, x = self.small_px[i][int(rng.integers(len(self.small_px[i])))]
            y0 = int(y) - int(rng.integers(side // 4, 3 * side // 4 + 1))
            x0 = int(x) - int(rng.integers(side // 4, 3 * side // 4 + 1))
        else:
            i = int(rng.integers(len(self.tiles)))
            h, w = self.tiles[i].label.shape
            y0 = int(rng.integers(max(h - side, 0) + 1))
            x0 = int(rng.integers(max(w - side, 0) + 1))
        t = self.tiles[i]
        c, h, w = t.image.shape
        img = np.zeros((c, side, side), np.float32)
        lab = np.full((side, side), IGNORE, np.uint8)
        ys, xs, ye, xe = max(y0, 0), max(x0, 0), min(y0 + side, h), min(x0 + side, w)
        if ye > ys and xe > xs:
            img[:, ys - y0:ye - y0, xs - x0:xe - x0] = t.image[:, ys:ye, xs:xe]
            lab[ys - y0:ye - y0, xs - x0:xe - x0] = t.label[ys:ye, xs:xe]
        if rng.random() < 0.5:
            img, lab = img[:, :, ::-1], lab[:, ::-1]
        k = int(rng.integers(4))
        img, lab = np.rot90(img, k, axes=(1, 2)), np.rot90(lab, k)
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def batch(self, n: int, side: int, small_fraction: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
        from geors.train.augment import random_photometric

        imgs, labs = [], []
        for _ in range(n):
            img, lab = self.crop(side, self.rng.random() < small_fraction)
            imgs.append(random_photometric(img, self.rng, jitter))
            labs.append(lab)
        return np.stack(imgs), np.stack(labs)


def _lr_factor(step: int, total: int, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay over the schedule's progress.

    Progress is the larger of the step fraction and ``time_fraction`` (elapsed
    / budget), so a run stopped by its time budget still ends annealed instead
    of at a high learning rate.
    """
    if step < warmup:
        return (step + 1) / warmup
    frac = max((step - warmup) / max(1, total - warmup), time_fraction)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


ProgressFn = Callable[[dict[str, Any]], None]


def _run_phase(name: str, steps: int, budget: float | None, step_fn: Callable[[int], float], opt, cfg: SegTrainConfig,
               progress: ProgressFn | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    base = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    done = 0
    for step in range(steps):
        tf = (time.perf_counter() - t0) / budget if budget else 0.0
        f = _lr_factor(step, steps, cfg.warmup_steps, tf)
        for g, b in zip(opt.param_groups, base, strict=True):
            g["lr"] = b * f
        losses.append(step_fn(step))
        done = step + 1
        elapsed = time.perf_counter() - t0
        if done % cfg.log_every == 0 or done == steps:
            rate = elapsed / done
            eta = rate * (steps - done)
            if budget is not None:
                eta = min(eta, max(0.0, budget - elapsed))
            rec = {"phase": name, "step": done, "steps": steps, "loss": float(np.mean(losses[-cfg.log_every:])),
                   "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1)}
            log.info("%s step %d/%d loss %.4f eta %.0fs", name, done, steps, rec["loss"], eta)
            if progress is not None:
                progress(rec)
        if budget is not None and elapsed >= budget:
            log.info("%s: time budget reached after %d of %d steps", name, done, steps)
            break
    return {"steps": done, "planned_steps": steps, "seconds": round(time.perf_counter() - t0, 1),
            "final_loss": float(np.mean(losses[-cfg.log_every:])) if losses else None}


def train_segmenter(
    tiles: Sequence[SegTile],
    classes: Sequence[str],
    small_classes: Sequence[str],
    cfg: SegTrainConfig | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    init_coarse: C2FNet | None = None,
) -> tuple[C2FNet, dict[str, Any]]:
    """Train C2FNet: coarse net first, then (coarse frozen) the fine net on selected windows.

    Args:
        tiles: labelled windows (:func:`load_training_tiles`).
        classes: class names, id order.
        small_classes: names of the small-object classes (must be in ``classes``).
        cfg: schedule; see :class:`SegTrainConfig`.
        meta: extra model metadata (tile_size, gsd_m, bands, normalisation...).
        progress: called with ``{"phase", "step", "steps", "loss", "elapsed_s", "eta_s"}`` every ``log_every`` steps.
        init_coarse: start from this model's coarse weights and skip... nothing: it is trained further
            for ``coarse_steps`` (0 keeps it as is; used for the coarse-vs-C2FNet ablation).

    Returns:
        ``(model in eval mode on CPU, metadata)`` ready for :func:`geors.models.registry.save_model`.
    """
    from geors.detect import resolve_device

    cfg = cfg or SegTrainConfig()
    if not tiles:
        raise LabelError("no labelled training windows")
    unknown = [c for c in small_classes if c not in classes]
    if unknown:
        raise ConfigError(f"--small-classes {unknown} are not among the label classes {list(classes)}.")
    if len(classes) > 255:
        raise ConfigError(f"{len(classes)} classes: at most 255 fit a uint8 class raster.")
    small_ids = [list(classes).index(c) for c in small_classes]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    c_in = int(tiles[0].image.shape[0])
    arch = C2FNetConfig(in_channels=c_in, num_classes=len(classes), small_classes=tuple(small_ids), **cfg.arch)
    model = C2FNet(arch)
    if init_coarse is not None:
        model.coarse.load_state_dict(init_coarse.coarse.state_dict())
    model.to(device)
    sampler = _Sampler(tiles, small_ids, rng)
    total_steps = cfg.coarse_steps + (cfg.fine_steps if small_ids else 0)
    budget_c = budget_f = None
    if cfg.max_seconds is not None:
        budget_c = cfg.max_seconds * cfg.coarse_steps / max(total_steps, 1)
    t_start = time.perf_counter()

    # --- phase 1: coarse
    model.coarse.train()
    opt = torch.optim.AdamW(model.coarse.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def coarse_step(step: int) -> float:
        x, y = sampler.batch(cfg.batch_size, cfg.crop_size, cfg.small_fraction, cfg.color_jitter)
        xt = torch.from_numpy(x).to(device)
        yt = torch.from_numpy(y.astype(np.int64)).to(device)
        if bool((yt == IGNORE).all()):
            return float("nan")
        loss = F.cross_entropy(model.coarse(xt), yt, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    coarse_info = _run_phase("coarse", cfg.coarse_steps, budget_c, coarse_step, opt, cfg, progress)

    # --- phase 2: fine, coarse frozen
    model.coarse.eval()
    for p in model.coarse.parameters():
        p.requires_grad_(False)
    fine_info: dict[str, Any] = {"steps": 0}
    if small_ids and cfg.fine_steps > 0:
        if cfg.max_seconds is not None:
            budget_f = max(0.0, cfg.max_seconds - (time.perf_counter() - t_start))
        model.fine.train()
        opt_f = torch.optim.AdamW(model.fine.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        k = min(arch.window, cfg.crop_size)
        small_lut = torch.from_numpy(sampler.small_lut).to(device)

        def fine_step(step: int) -> float:
            x, y = sampler.batch(cfg.batch_size, cfg.crop_size, max(cfg.small_fraction, 0.75), cfg.color_jitter)
            xt = torch.from_numpy(x).to(device)
            yt = torch.from_numpy(y.astype(np.int64)).to(device)
            with torch.no_grad():
                pred = model.coarse(xt).argmax(1)
            windows = select_windows(small_lut[pred], k, arch.window_stride, cfg.fine_windows, arch.min_pixels)
            for i in range(len(windows)):
                pts = torch.nonzero(small_lut[yt[i]])
                for _ in range(cfg.fine_gt_windows if len(pts) else 0):
                    py, px = pts[int(rng.integers(len(pts)))].tolist()
                    y0 = int(np.clip(py - k // 2 + int(rng.integers(-k // 4, k // 4 + 1)), 0, cfg.crop_size - k))
                    x0 = int(np.clip(px - k // 2 + int(rng.integers(-k // 4, k // 4 + 1)), 0, cfg.crop_size - k))
                    windows[i].append((y0, x0, k))
                if not windows[i]:  # a random window keeps the batch non-empty and shows negatives
                    windows[i].append((int(rng.integers(cfg.crop_size - k + 1)),
                                       int(rng.integers(cfg.crop_size - k + 1)), k))
            xw = crop_windows(xt, windows)
            yw = crop_windows(yt[:, None], windows)[:, 0]
            target = small_lut[yw.clamp(max=255)].float()
            mask = (yw != IGNORE).float()
            if float(mask.sum()) == 0:
                return float("nan")
            z = arch.zoom
            inp = F.interpolate(xw, scale_factor=z, mode="bilinear", align_corners=False) if z > 1 else xw
            logit = model.fine(inp)
            if z > 1:
                logit = F.avg_pool2d(logit, z)
            loss = (F.binary_cross_entropy_with_logits(logit[:, 0], target, reduction="none") * mask).sum() / mask.sum()
            opt_f.zero_grad(set_to_none=True)
            loss.backward()
            opt_f.step()
            return float(loss.detach())

        fine_info = _run_phase("fine", cfg.fine_steps, budget_f, fine_step, opt_f, cfg, progress)
    for p in model.coarse.parameters():
        p.requires_grad_(True)
    model.eval().cpu()

    full = dict(meta or {})
    full.update(
        architecture="c2fnet",
        arch_args=arch.to_dict(),
        classes=list(classes),
        small_classes=list(small_classes),
        task="segmentation",
        bands=c_in,
    )
    full.setdefault("colours", default_colours(len(classes)))
    full.setdefault("tile_size", 640)
    full.setdefault("overlap", 128)
    full.setdefault("normalisation", {"method": "percentile_stretch", "percentiles": [2, 98], "scope": "scene",
                                      "range": [0, 1]})
    training = dict(full.get("training", {}))
    training.update(config=asdict(cfg), coarse=coarse_info, fine=fine_info,
                    seconds=round(time.perf_counter() - t_start, 1), tiles=len(tiles))
    full["training"] = training
    return model, full
