"""Mask stage: boxes -> instance masks -> polygons in the scene CRS (SAMRS).

Engines (one interface, :class:`MaskEngine`), chosen with :func:`make_mask_engine`:

- ``sam``: Segment Anything prompted with boxes. The image embedding is computed
  once per image (tile or window) and all of its boxes are decoded in batches
  with ``multimask_output=False``; boxes are mapped to SAM's 1024 frame with
  ``ResizeLongestSide``. ``mask_score`` is SAM's predicted IoU. Each mask is
  clipped to its prompt box dilated by ``clip_margin`` (default: 10 % of the
  longer box side, at least 2 px) because a box prompt sometimes leaks into a
  neighbouring object of the same texture; SAMRS does not clip. Pass
  ``clip_margin=None`` to disable.
- ``grabcut``: OpenCV ``cv2.grabCut`` initialised with the box on a crop
  around it (margin 25 % of the longer side, at least 8 px, clipped to the
  image), 3 iterations. The box is given as an initial mask (inside = probable
  foreground, margin = background), which is what ``GC_INIT_WITH_RECT`` does,
  but also works for boxes cut by the image edge. It needs no weights. Its score is the fraction of the box's
  pixels labelled foreground (a fill ratio, not a probability); when GrabCut
  separates less than 5 % of the box (``min_fill``) it has failed (typical
  for objects packed among look-alikes, e.g. contiguous tree crowns, where the
  background model explains the box too) and the box itself is returned with
  score 0.0, so ``mask_score = 0`` marks box fallbacks.
- ``box``: the box itself, score 1.0.

Prompts follow SAMRS: horizontal boxes as they are; rotated boxes (4-corner
polygons) as their circumscribed horizontal box, the RH-box (:func:`rh_box`).

Box coordinates are pixels ``(xmin, ymin, xmax, ymax)`` with x = column and
y = row, edges on pixel boundaries (a box covering pixel column 3 only is
``x 3..4``). Images are ``(H, W, 3)`` uint8 RGB (HWC).

Boxes near a tile border: the owner tile sees an object whole when the overlap
is at least the object size, but a box can still cross the tile edge (large
objects, small overlaps). :func:`box_fits` tells which boxes are inside a tile
with a margin; for the others :func:`box_window` gives a scene window of the
tile size centred on the box (shifted inside the scene) that the caller reads
with ``Scene.read_window`` and decodes on its own. :func:`masks_for_boxes` and
:func:`instances_for_tile` do this.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.windows import Window

from geors.errors import ConfigError, ModelError

__all__ = [
    "MaskCrop",
    "MaskResult",
    "MaskEngine",
    "BoxEngine",
    "GrabCutEngine",
    "SamEngine",
    "SamBoxPredictor",
    "make_mask_engine",
    "rh_box",
    "box_fits",
    "box_window",
    "mask_to_geometry",
    "masks_for_boxes",
    "instances_for_tile",
    "write_instance_masks",
]

log = logging.getLogger(__name__)

SAM_KINDS = ("vit_b", "vit_l", "vit_h", "vit_t")


# --------------------------------------------------------------------------- boxes


def rh_box(corners: np.ndarray | Sequence) -> np.ndarray:
    """Circumscribed horizontal box (RH-box) of rotated boxes, per SAMRS.

    Args:
        corners: (4, 2) or (N, 4, 2) corner coordinates (x, y), any order. Any
            polygon ring (K, 2) works too (its bounding box).

    Returns:
        (4,) or (N, 4) float64 ``(xmin, ymin, xmax, ymax)`` = min/max of the corners.
    """
    c = np.asarray(corners, dtype=np.float64)
    if c.ndim not in (2, 3) or c.shape[-1] != 2:
        raise ValueError(f"corners must have shape (4, 2) or (N, 4, 2), got {c.shape}")
    return np.concatenate([c.min(axis=-2), c.max(axis=-2)], axis=-1)


def _as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim == 3:  # rotated boxes given as corners
        b = rh_box(b)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) xyxy or (N, 4, 2) corners, got {b.shape}")
    return b


def box_fits(boxes_xyxy: np.ndarray, width: int, height: int, margin: float = 0.0) -> np.ndarray:
    """Which boxes lie inside a ``width x height`` image with ``margin`` px to spare.

    Args:
        boxes_xyxy: (N, 4) image-local pixel boxes.
        width, height: image size in pixels.
        margin: required free pixels between the box and the image edge.

    Returns:
        (N,) bool.
    """
    b = _as_boxes(boxes_xyxy)
    return (
        (b[:, 0] >= margin) & (b[:, 1] >= margin) & (b[:, 2] <= width - margin) & (b[:, 3] <= height - margin)
    )


def box_window(
    box_xyxy: Sequence[float],
    scene_width: int,
    scene_height: int,
    size: int = 640,
    margin: float = 16.0,
) -> Window:
    """A scene window that contains a box whole, for decoding boxes that cross a tile edge.

    The window is ``size x size`` pixels centred on the box and shifted to lie
    inside the scene where the scene is large enough (so SAM sees the object at
    the same scale as in a tile). A box larger than ``size - 2 * margin`` gets
    a larger window: the box plus ``margin`` on each side. The window may
    extend past the scene only when the scene is smaller than the window;
    ``Scene.read_window`` pads that part with zeros.

    Args:
        box_xyxy: ``(xmin, ymin, xmax, ymax)`` in scene pixel coordinates.
        scene_width, scene_height: scene size in pixels.
        size: nominal window size in pixels (use the tile size).
        margin: minimum context in pixels around the box.

    Returns:
        A ``rasterio.windows.Window`` with integer offsets, scene pixel coordinates.
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)

    def axis(lo: float, hi: float, length: int) -> tuple[int, int]:
        need = int(math.ceil(hi - lo + 2 * margin))
        n = max(int(size), need)
        start = int(math.floor((lo + hi) / 2 - n / 2))
        # inside the scene when it is large enough, else from the scene origin (padded past the end)
        start = min(max(start, 0), length - n) if length >= n else 0
        return start, n

    c0, w = axis(x0, x1, scene_width)
    r0, h = axis(y0, y1, scene_height)
    return Window(c0, r0, w, h)


def _clip_window(box: np.ndarray, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """Integer pixel window (c0, r0, c1, r1) of a box dilated by ``margin``, clipped to the image."""
    c0 = max(int(math.floor(box[0] - margin)), 0)
    r0 = max(int(math.floor(box[1] - margin)), 0)
    c1 = min(int(math.ceil(box[2] + margin)), width)
    r1 = min(int(math.ceil(box[3] + margin)), height)
    return c0, r0, max(c1, c0), max(r1, r0)


# --------------------------------------------------------------------------- results


@dataclass
class MaskCrop:
    """One instance mask stored compactly as a crop of the image.

    Attributes:
        mask: bool (h, w), the mask inside the crop.
        row_off, col_off: position of the crop in the image, pixels.
        score: mask score (SAM predicted IoU, GrabCut fill ratio, 1.0 for box).
    """

    mask: np.ndarray
    row_off: int
    col_off: int
    score: float

    def paste(self, height: int, width: int) -> np.ndarray:
        """The mask as a full (height, width) bool image."""
        out = np.zeros((height, width), dtype=bool)
        h, w = self.mask.shape
        out[self.row_off : self.row_off + h, self.col_off : self.col_off + w] = self.mask
        return out

    def transform(self, image_transform: Affine) -> Affine:
        """Affine transform of the crop's pixel grid given the image's transform."""
        return image_transform @ Affine.translation(self.col_off, self.row_off)

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())


@dataclass
class MaskResult:
    """A mask as a polygon in the scene CRS.

    Attributes:
        geometry: shapely Polygon/MultiPolygon in scene CRS, or None when empty.
        score: mask score (see the engine).
        method: engine name for the ``mask_method`` field.
        area_px: number of mask pixels.
        tile_id: id of the tile (or ``window``) whose pixels were decoded.
    """

    geometry: object | None
    score: float
    method: str
    area_px: int
    tile_id: str | None = None


# --------------------------------------------------------------------------- engines


class MaskEngine:
    """Turns an RGB image and boxes into instance masks.

    Subclasses implement :meth:`predict_crops`; :meth:`predict` gives full-size
    masks for convenience (memory N x H x W, prefer crops for many boxes).
    """

    method: str = "base"

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        """Masks of boxes as crops.

        Args:
            image_rgb8: (H, W, 3) uint8 RGB.
            boxes_xyxy: (N, 4) float image-local pixel boxes, or (N, 4, 2)
                rotated-box corners (converted to RH-boxes).

        Returns:
            N :class:`MaskCrop` in box order.
        """
        raise NotImplementedError

    def predict(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full-size masks of boxes.

        Args:
            image_rgb8: (H, W, 3) uint8 RGB.
            boxes_xyxy: (N, 4) float image-local pixel boxes (or (N, 4, 2) corners).

        Returns:
            ``(masks, scores)``: bool (N, H, W) and float32 (N,).
        """
        _check_image(image_rgb8)
        h, w = image_rgb8.shape[:2]
        crops = self.predict_crops(image_rgb8, boxes_xyxy)
        masks = np.zeros((len(crops), h, w), dtype=bool)
        for i, c in enumerate(crops):
            ch, cw = c.mask.shape
            masks[i, c.row_off : c.row_off + ch, c.col_off : c.col_off + cw] = c.mask
        return masks, np.array([c.score for c in crops], dtype=np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r})"


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array, got shape {shape} dtype {dtype}")


def _box_crop(box: np.ndarray, width: int, height: int) -> MaskCrop:
    c0, r0, c1, r1 = _clip_window(box, width, height, 0.0)
    # pixel centres inside the box
    cols = np.arange(c0, c1) + 0.5
    rows = np.arange(r0, r1) + 0.5
    m = ((rows[:, None] >= box[1]) & (rows[:, None] <= box[3])) & ((cols[None, :] >= box[0]) & (cols[None, :] <= box[2]))
    if not m.any() and c1 > c0 and r1 > r0:  # sub-pixel box: keep the pixel(s) it touches
        m[:] = True
    return MaskCrop(m, r0, c0, 1.0)


class BoxEngine(MaskEngine):
    """The box itself as the mask (pixels whose centre lies in the box), score 1.0."""

    method = "box"

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        _check_image(image_rgb8)
        h, w = image_rgb8.shape[:2]
        return [_box_crop(b, w, h) for b in _as_boxes(boxes_xyxy)]


class GrabCutEngine(MaskEngine):
    """OpenCV GrabCut initialised with each box, on a crop around it.

    Args:
        iterations: GrabCut iterations (default 3).
        margin: crop margin as a fraction of the longer box side.
        min_margin_px: minimum crop margin in pixels.
        seed: OpenCV RNG seed so results are reproducible (GrabCut's GMM
            initialisation uses k-means with OpenCV's global RNG).
        min_fill: when less than this fraction of the box is foreground,
            GrabCut is taken to have failed and the box is returned with
            score 0.0.
    """

    method = "grabcut"

    def __init__(self, iterations: int = 3, margin: float = 0.25, min_margin_px: int = 8, seed: int = 0,
                 min_fill: float = 0.05):
        self.min_fill = float(min_fill)
        self.iterations = int(iterations)
        self.margin = float(margin)
        self.min_margin_px = int(min_margin_px)
        self.seed = seed

    def _one(self, image: np.ndarray, box: np.ndarray) -> MaskCrop:
        import cv2

        h, w = image.shape[:2]
        bc0, br0, bc1, br1 = _clip_window(box, w, h, 0.0)
        if bc1 - bc0 < 3 or br1 - br0 < 3:
            return _box_crop(box, w, h)
        m = max(self.min_margin_px, int(round(self.margin * max(bc1 - bc0, br1 - br0))))
        # crop with margin, clipped to the image; the margin seeds the background model
        c0, r0 = max(bc0 - m, 0), max(br0 - m, 0)
        c1, r1 = min(bc1 + m, w), min(br1 + m, h)
        crop = np.ascontiguousarray(image[r0:r1, c0:c1, ::-1])  # OpenCV expects BGR
        gc = np.full(crop.shape[:2], cv2.GC_BGD, dtype=np.uint8)
        gc[br0 - r0 : br1 - r0, bc0 - c0 : bc1 - c0] = cv2.GC_PR_FGD
        if not (gc == cv2.GC_BGD).any():  # box covers the whole image: no background to learn from
            crop_box = _box_crop(box, w, h)
            crop_box.score = 0.0
            return crop_box
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        try:
            # initialising with a mask equals GC_INIT_WITH_RECT when the rect touches no image edge,
            # and still works for boxes cut by the image edge (the rect would have no outside there)
            cv2.grabCut(crop, gc, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as exc:  # degenerate colour statistics (e.g. a flat crop)
            log.debug("grabCut failed for box %s: %s; using the box", box.tolist(), exc)
            crop_box = _box_crop(box, w, h)
            crop_box.score = 0.0
            return crop_box
        fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        fg = fg[br0 - r0 : br1 - r0, bc0 - c0 : bc1 - c0]
        if fg.mean() < self.min_fill:  # nothing (or a speck) separated from the surroundings
            crop_box = _box_crop(box, w, h)
            crop_box.score = 0.0
            return crop_box
        return MaskCrop(fg, br0, bc0, float(fg.mean()))

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        import cv2

        _check_image(image_rgb8)
        if self.seed is not None:
            cv2.setRNGSeed(int(self.seed))
        return [self._one(image_rgb8, b) for b in _as_boxes(boxes_xyxy)]


class SamBoxPredictor:
    """Box-prompted SAM inference: embed an image once, decode many boxes in batches.

    A thin wrapper over a ``segment_anything`` ``Sam`` (or MobileSAM) model
    using ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` directly,
    like ``SamPredictor.predict_torch`` but with batching and cropping built in.

    Args:
        model: a ``Sam`` module.
        device: ``"cpu"``, ``"cuda"``...
        batch_size: boxes decoded per mask-decoder call.
        autocast_dtype: e.g. ``torch.bfloat16`` to run under autocast on GPU;
            None for float32.
    """

    def __init__(self, model, device: str = "cpu", batch_size: int = 32, autocast_dtype=None):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = int(batch_size)
        self.autocast_dtype = autocast_dtype
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.features = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=self.autocast_dtype)

    def set_image(self, image_rgb8: np.ndarray) -> None:
        """Compute the image embedding (the expensive encoder) once.

        Args:
            image_rgb8: (H, W, 3) uint8 RGB, any size; resized so the longer
                side is the encoder input size (1024 for official models).
        """
        import torch

        _check_image(image_rgb8)
        self.original_size = (int(image_rgb8.shape[0]), int(image_rgb8.shape[1]))
        resized = self.transform.apply_image(image_rgb8)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.input_size = (int(x.shape[-2]), int(x.shape[-1]))
        with torch.inference_mode(), self._autocast():
            self.features = self.model.image_encoder(self.model.preprocess(x.float()))

    def predict_boxes(
        self, boxes_xyxy: np.ndarray, clip_margin: float | None = 0.1
    ) -> list[MaskCrop]:
        """Decode boxes against the current embedding.

        Args:
            boxes_xyxy: (N, 4) float pixel boxes in the original image frame.
            clip_margin: masks are cut to the box dilated by
                ``max(2 px, clip_margin * longer box side)``; None keeps the
                whole mask (cropped to its bounding box).

        Returns:
            N :class:`MaskCrop`; score = SAM's predicted IoU.
        """
        import torch

        if self.features is None or self.original_size is None:
            raise RuntimeError("call set_image() before predict_boxes()")
        boxes = _as_boxes(boxes_xyxy)
        h, w = self.original_size
        out: list[MaskCrop] = []
        for s in range(0, len(boxes), self.batch_size):
            b = boxes[s : s + self.batch_size]
            tb = torch.as_tensor(self.transform.apply_boxes(b, self.original_size), dtype=torch.float32,
                                 device=self.device)
            with torch.inference_mode(), self._autocast():
                sparse, dense = self.model.prompt_encoder(points=None, boxes=tb, masks=None)
                low_res, iou = self.model.mask_decoder(
                    image_embeddings=self.features,
                    image_pe=self.model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
                masks = self.model.postprocess_masks(low_res.float(), self.input_size, self.original_size)
            masks = (masks[:, 0] > self.model.mask_threshold).cpu().numpy()
            scores = iou[:, 0].float().cpu().numpy()
            for k, box in enumerate(b):
                m = masks[k]
                if clip_margin is not None:
                    side = max(box[2] - box[0], box[3] - box[1])
                    c0, r0, c1, r1 = _clip_window(box, w, h, max(2.0, clip_margin * side))
                else:
                    rows, cols = np.nonzero(m)
                    if rows.size:
                        c0, r0, c1, r1 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
                    else:
                        c0 = r0 = c1 = r1 = 0
                out.append(MaskCrop(m[r0:r1, c0:c1].copy(), int(r0), int(c0), float(scores[k])))
        return out


class SamEngine(MaskEngine):
    """Segment Anything prompted with boxes (see module docstring).

    Args:
        model: a loaded ``Sam`` module (see :func:`geors.sam_weights.load_sam`).
        kind: architecture name for ``method`` (``vit_b``...).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_size: boxes per decoder call.
        clip_margin: see :meth:`SamBoxPredictor.predict_boxes`.
        bf16: run under bfloat16 autocast (GPU only).
    """

    def __init__(self, model, kind: str, device: str = "auto", batch_size: int = 32,
                 clip_margin: float | None = 0.1, bf16: bool = False):
        import torch

        from geors.detect import resolve_device  # one device rule for detector and SAM

        self.device = str(resolve_device(device))
        dtype = torch.bfloat16 if (bf16 and self.device.startswith("cuda")) else None
        self.predictor = SamBoxPredictor(model, self.device, batch_size, dtype)
        self.kind = kind
        self.method = f"sam:{kind}"
        self.clip_margin = clip_margin

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        boxes = _as_boxes(boxes_xyxy)
        if len(boxes) == 0:
            return []
        self.predictor.set_image(image_rgb8)
        return self.predictor.predict_boxes(boxes, clip_margin=self.clip_margin)


def make_mask_engine(spec: str = "auto", device: str = "auto", checkpoint: str | os.PathLike | None = None,
                     **options) -> MaskEngine:
    """Build a mask engine from a CLI-style spec.

    Args:
        spec: ``vit_b`` | ``vit_l`` | ``vit_h`` | ``vit_t`` | a checkpoint path
            (``.pth``/``.pt``) | ``grabcut`` | ``box`` | ``auto``. ``auto``
            means SAM vit_b when a checkpoint is found (explicit
            ``checkpoint``, ``$GEORS_SAM_CHECKPOINT`` or the cache directory),
            else GrabCut with a logged warning. ``sam-vit_b`` style names are
            accepted too.
        device: ``auto``, ``cpu`` or ``cuda``.
        checkpoint: explicit checkpoint path for the SAM kinds.
        **options: passed to the engine (e.g. ``batch_size``, ``clip_margin``,
            ``bf16`` for SAM; ``iterations`` for GrabCut).

    Raises:
        ModelError: a SAM kind was asked for but no checkpoint was found (the
            message says how to download it) or the file is not a SAM.
        ConfigError: unknown spec.
    """
    from geors import sam_weights

    s = str(spec).strip()
    key = s.lower().removeprefix("sam:").removeprefix("sam-")
    if key == "box":
        return BoxEngine()
    if key == "grabcut":
        return GrabCutEngine(**options)
    if key == "auto":
        path = sam_weights.find_checkpoint("vit_b", checkpoint)
        if path is None:
            log.warning(
                "no SAM checkpoint found; using GrabCut masks. For SAM masks run "
                "'geors models download sam-vit_b' or set %s.", sam_weights.ENV_CHECKPOINT
            )
            return GrabCutEngine(**{k: v for k, v in options.items() if k in ("iterations", "margin", "min_fill")})
        model, kind = sam_weights.load_sam(path)
        return SamEngine(model, kind, device=device, **options)
    if key in SAM_KINDS:
        path = sam_weights.find_checkpoint(key, checkpoint)
        if path is None:
            raise ModelError(sam_weights.missing_checkpoint_message(key))
        model, kind = sam_weights.load_sam(path, kind="vit_t" if key == "vit_t" else None)
        if kind in sam_weights.SAM_CHECKPOINTS and kind != key:
            log.warning("checkpoint %s holds SAM %s, not %s as requested; using it as %s", path, kind, key, kind)
        return SamEngine(model, kind, device=device, **options)
    p = Path(s).expanduser()
    if p.suffix.lower() in (".pth", ".pt") or p.exists():
        if not p.is_file():
            raise ModelError(f"SAM checkpoint '{p}' does not exist; check the path.")
        kind_hint = "vit_t" if p.name == sam_weights.SAM_CHECKPOINTS["vit_t"].filename else None
        model, kind = sam_weights.load_sam(p, kind=kind_hint)
        return SamEngine(model, kind, device=device, **options)
    raise ConfigError(
        f"unknown mask engine '{spec}'; use one of vit_b, vit_l, vit_h, vit_t, a .pth checkpoint path, "
        "grabcut, box or auto"
    )


# --------------------------------------------------------------------------- polygons


def mask_to_geometry(
    mask: np.ndarray,
    transform: Affine,
    simplify_px: float = 0.5,
    multipart: str = "largest",
    min_hole_px: int = 16,
    min_part_px: int = 4,
):
    """Polygonise a mask into the scene CRS.

    Uses ``rasterio.features.shapes`` (4-connectivity) on the mask cropped to
    its bounding box, so the cost scales with the object, not the image.

    Multi-part rule: ``"largest"`` keeps the largest connected part (masks are
    clipped to their dilated box, so the largest part is the object; fragments
    are noise); ``"all"`` keeps every part of at least ``min_part_px`` pixels as
    a MultiPolygon (a Polygon when one part remains). Holes smaller than
    ``min_hole_px`` pixels are filled in both modes.

    Simplification: Douglas-Peucker with topology preserved and a tolerance of
    ``simplify_px`` pixels converted to CRS units (``simplify_px * sqrt(pixel
    area)``); 0 keeps the exact pixel outline (which rasterises back to the
    same pixels).

    Args:
        mask: bool (H, W).
        transform: affine transform of ``mask``'s pixel grid (tile or window).
        simplify_px: tolerance in pixels.
        multipart: ``"largest"`` or ``"all"``.
        min_hole_px: holes below this many pixels are filled.
        min_part_px: parts below this many pixels are dropped (``"all"``).

    Returns:
        shapely Polygon or MultiPolygon in the CRS of ``transform``, or None
        when the mask is empty.
    """
    from rasterio.features import shapes
    from shapely.geometry import MultiPolygon, Polygon, shape
    from shapely.validation import make_valid

    if multipart not in ("largest", "all"):
        raise ConfigError(f"multipart must be 'largest' or 'all', got {multipart!r}")
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub = np.ascontiguousarray(m[r0:r1, c0:c1]).astype(np.uint8)
    t = transform @ Affine.translation(int(c0), int(r0))
    px_area = abs(transform.a * transform.e - transform.b * transform.d)
    parts = []
    for geom, _ in shapes(sub, mask=sub.astype(bool), transform=t, connectivity=4):
        p = shape(geom)
        if p.interiors:
            keep = [r for r in p.interiors if Polygon(r).area >= min_hole_px * px_area]
            p = Polygon(p.exterior, keep)
        parts.append(p)
    parts.sort(key=lambda p: p.area, reverse=True)
    if multipart == "largest":
        geom = parts[0]
    else:
        kept = [p for p in parts if p.area >= min_part_px * px_area] or parts[:1]
        geom = kept[0] if len(kept) == 1 else MultiPolygon(kept)
    if simplify_px > 0:
        geom = geom.simplify(simplify_px * math.sqrt(px_area), preserve_topology=True)
    if not geom.is_valid:
        geom = make_valid(geom)
    return None if geom.is_empty else geom


# --------------------------------------------------------------------------- stage functions


def _decode(engine: MaskEngine, image: np.ndarray, boxes: np.ndarray, transform: Affine, simplify_px: float,
            multipart: str) -> list[MaskResult]:
    crops = engine.predict_crops(image, boxes)
    return [
        MaskResult(mask_to_geometry(c.mask, c.transform(transform), simplify_px, multipart), c.score,
                   engine.method, c.area_px)
        for c in crops
    ]


def masks_for_boxes(
    scene,
    boxes_xyxy: np.ndarray,
    engine: MaskEngine,
    grid=None,
    *,
    simplify_px: float = 0.5,
    multipart: str = "largest",
    edge_margin: float = 8.0,
    progress=None,
) -> list[MaskResult]:
    """Masks for boxes anywhere in a scene, reading each tile once.

    Boxes are grouped by the tile whose core contains their centre (the
    pipeline's ownership rule). Each tile with boxes is read once and its
    boxes decoded together (one SAM embedding per tile). A box that does not
    fit in its owner tile with ``edge_margin`` px to spare is decoded on its
    own window from :func:`box_window`.

    Args:
        scene: a :class:`geors.raster.Scene`.
        boxes_xyxy: (N, 4) scene pixel boxes, or (N, 4, 2) rotated corners.
        engine: a :class:`MaskEngine`.
        grid: a :class:`geors.tiling.TileGrid`; default 1024 px tiles with
            256 px overlap (SAM's native input size, so no down-scaling).
        simplify_px: polygon simplification tolerance in pixels.
        multipart: see :func:`mask_to_geometry`.
        edge_margin: context in pixels required between a box and the tile edge.
        progress: optional callable ``progress(n_done_boxes)``.

    Returns:
        N :class:`MaskResult` in input order (geometry in scene CRS, None if empty).
    """
    from geors.tiling import TileGrid

    boxes = _as_boxes(boxes_xyxy)
    if grid is None:
        grid = TileGrid(scene, size=1024, overlap=256)
    results: list[MaskResult | None] = [None] * len(boxes)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, b in enumerate(boxes):
        cx = min(max((b[0] + b[2]) / 2, 0), grid.width - 1e-6)
        cy = min(max((b[1] + b[3]) / 2, 0), grid.height - 1e-6)
        t = grid.owner(cx, cy)
        groups[(t.row, t.col)].append(i)
    done = 0
    for (row, col), idx in sorted(groups.items()):
        tile = grid.tile(row, col)
        local = boxes[idx] - np.array([tile.col_off, tile.row_off] * 2, dtype=np.float64)
        fits = box_fits(local, tile.width, tile.height, edge_margin)
        if fits.any():
            img = scene.read_tile(tile)
            res = _decode(engine, img.rgb8(), local[fits], img.transform, simplify_px, multipart)
            for j, r in zip(np.asarray(idx)[fits], res, strict=True):
                r.tile_id = tile.id
                results[j] = r
        for j in np.asarray(idx)[~fits]:
            win = box_window(boxes[j], scene.width, scene.height, grid.size, edge_margin)
            img = scene.read_window(win)
            b = boxes[j : j + 1] - np.array([win.col_off, win.row_off] * 2, dtype=np.float64)
            results[j] = _decode(engine, img.rgb8(), b, img.transform, simplify_px, multipart)[0]
            results[j].tile_id = tile.id
        done += len(idx)
        if progress is not None:
            progress(done)
    return results  # type: ignore[return-value]


def instances_for_tile(
    scene,
    tile,
    tile_image,
    detections: Sequence,
    engine: MaskEngine,
    *,
    simplify_px: float = 0.5,
    multipart: str = "largest",
    edge_margin: float = 8.0,
) -> list:
    """Pipeline stage: masks for a tile's detections, reusing the tile's pixels.

    Boxes that fit inside the tile (``edge_margin`` px to spare) are decoded on
    ``tile_image`` (no second read, one SAM embedding); boxes crossing the tile
    edge are decoded on a :func:`box_window` read from ``scene``.

    Args:
        scene: the :class:`geors.raster.Scene` (only read for edge boxes).
        tile: the :class:`geors.tiling.Tile`.
        tile_image: the tile's :class:`geors.raster.TileImage` already read.
        detections: :class:`geors.results.Detection` objects with ``box_px``
            (tile-local pixels); pass only the ones the tile owns.
        engine: a :class:`MaskEngine`.
        simplify_px, multipart, edge_margin: see :func:`masks_for_boxes`.

    Returns:
        :class:`geors.results.Instance` list; ``detection_index`` is the index
        into ``detections``. Detections whose mask is empty are skipped.
    """
    from geors.results import Instance

    idx = [i for i, d in enumerate(detections) if getattr(d, "box_px", None) is not None]
    if not idx:
        return []
    local = np.array([detections[i].box_px for i in idx], dtype=np.float64)
    h, w = tile_image.image.shape[-2:]
    fits = box_fits(local, min(w, tile.width), min(h, tile.height), edge_margin)
    results: dict[int, MaskResult] = {}
    if fits.any():
        res = _decode(engine, tile_image.rgb8(), local[fits], tile_image.transform, simplify_px, multipart)
        for i, r in zip(np.asarray(idx)[fits], res, strict=True):
            results[int(i)] = r
    offset = np.array([tile.col_off, tile.row_off] * 2, dtype=np.float64)
    for k in np.flatnonzero(~fits):
        sb = local[k] + offset
        win = box_window(sb, scene.width, scene.height, tile.size, edge_margin)
        img = scene.read_window(win)
        b = (sb - np.array([win.col_off, win.row_off] * 2, dtype=np.float64))[None]
        results[int(idx[k])] = _decode(engine, img.rgb8(), b, img.transform, simplify_px, multipart)[0]
    out = []
    for i in idx:
        r = results[i]
        if r.geometry is None:
            continue
        d = detections[i]
        out.append(
            Instance(geometry=r.geometry, class_name=d.class_name, score=d.score, mask_score=r.score,
                     mask_method=r.method, detection_index=i, class_id=d.class_id)
        )
    return out


def write_instance_masks(
    scene,
    boxes,
    out_path: str | os.PathLike,
    engine: MaskEngine | str = "auto",
    class_field: str | None = None,
    *,
    grid=None,
    device: str = "auto",
    layer: str | None = None,
    simplify_px: float = 0.5,
    multipart: str = "largest",
) -> dict:
    """Boxes from a vector file -> instance masks -> ``instances`` layer of a GeoPackage.

    What ``geors masks`` runs. Boxes are read with
    :func:`geors.io.labels.read_labels` (any OGR vector in any CRS,
    reprojected; rotated boxes become their RH-box), decoded with
    :func:`masks_for_boxes` and appended to the ``instances`` layer (scene
    CRS) with :class:`geors.vector.GeoPackageWriter`. ``score`` is empty
    (the boxes were given, not detected) and ``detection_fid`` is empty.
    Boxes whose mask is empty are not written.

    Args:
        scene: a :class:`geors.raster.Scene` or a raster path.
        boxes: vector file path, or a :class:`geors.io.labels.LabelSet`.
        out_path: ``.gpkg`` to create or append to.
        engine: a :class:`MaskEngine` or a spec for :func:`make_mask_engine`.
        class_field: attribute holding the class (default ``class``/``label``).
        grid: tile grid for reading (default 1024 px tiles, 256 px overlap).
        device: for SAM engines.
        layer: layer of a multi-layer vector file.
        simplify_px, multipart: see :func:`mask_to_geometry`.

    Returns:
        Summary dict: ``n_boxes``, ``n_written``, ``n_empty``, ``mask_method``, ``run_id``, ``path``.
    """
    from geors.io.labels import read_labels
    from geors.raster import Scene, open_scene
    from geors.vector import GeoPackageWriter

    if not isinstance(scene, Scene):
        scene = open_scene(scene)
    ls = read_labels(boxes, scene, class_field=class_field, layer=layer) if isinstance(
        boxes, str | os.PathLike) else boxes
    if not isinstance(engine, MaskEngine):
        engine = make_mask_engine(str(engine), device=device)
    writer = GeoPackageWriter(out_path, scene.crs, layers=("instances",))
    config = {"scene": str(getattr(scene, "path", "")), "boxes": str(getattr(ls, "source", "")),
              "engine": engine.method, "class_field": class_field, "simplify_px": simplify_px,
              "multipart": multipart, "tile": getattr(grid, "size", 1024),
              "overlap": getattr(grid, "overlap", 256)}
    try:
        writer.start_run("masks", config, {"mask": engine.method})
        results = masks_for_boxes(scene, ls.boxes, engine, grid, simplify_px=simplify_px, multipart=multipart)
        from geors.vector import areas_m2

        keep = [i for i, r in enumerate(results) if r.geometry is not None]
        geoms = [results[i].geometry for i in keep]
        areas = areas_m2(geoms, scene.crs) if scene.crs is not None else np.zeros(len(geoms))
        rows = [
            {"detection_fid": None, "class": str(ls.class_names[i]), "class_id": int(ls.class_ids[i]),
             "score": None, "mask_score": float(results[i].score), "area_m2": float(a),
             "mask_method": results[i].method, "tile_id": results[i].tile_id, "scene": scene.name}
            for i, a in zip(keep, areas, strict=True)
        ]
        if rows:
            writer.write_features("instances", rows, geoms)
        writer.finish_run("finished")
    except BaseException:
        writer.finish_run("failed")
        raise
    finally:
        writer.close()
    return {"path": str(out_path), "n_boxes": len(results), "n_written": len(rows),
            "n_empty": len(results) - len(rows), "mask_method": engine.method, "run_id": writer.run_id}
