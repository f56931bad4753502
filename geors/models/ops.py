"""Box ops of R2-CNN: torchvision's public ``torchvision.ops`` kernels, imported on first use, and the few
rules of geors' own (``nms_top``, :class:`BoxCoder`).

``import torchvision`` imports ``torchvision.models``, ``datasets`` and ``ops``,
and ``torchvision.ops.roi_align`` imports ``torch._dynamo``: measured with torch
2.14.1 and torchvision 0.29.1 (CPU, one thread, ``farm-bench``, two sessions),
+1.5 to 1.6 s of CPU and +100 to 155 MiB of peak memory for a one-tile
``geors detect`` (3.3 s -> 4.8 s CPU).
So this module imports torchvision only when a box op first runs
(:func:`tv_ops`): commands and processes that never run the detector
(``tiles``, ``masks``, ``label``, ``segment``, ``models``, a QGIS session before
its first detection) do not pay for it. geors used to load torchvision's
compiled library file itself to skip that import; that bypassed torchvision's
own loader and version checks, so it is gone. Kernels written in plain torch
instead gave the same boxes but made the detector about a third slower per
tile on a CPU (2.6 s vs 1.95 s for two 640 px tiles, one thread).

Boxes are ``(N, 4)`` float tensors ``x1, y1, x2, y2`` in pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geors.errors import DependencyNotFoundError

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_iou",
    "clip_boxes_to_image",
    "nms",
    "nms_top",
    "ps_roi_align",
    "remove_small_boxes",
    "tv_ops",
]


def tv_ops():
    """``torchvision.ops``, imported on first use (the import costs ~1.5 s and 100-155 MiB; see above)."""
    try:
        import torchvision.ops
    except (ImportError, RuntimeError) as exc:  # missing, or torchvision's own check of the torch it was built for
        raise DependencyNotFoundError(
            f"the detector needs torchvision's box ops, which cannot be imported ({exc}); install the torchvision "
            "release made for this torch (pip install --force-reinstall torch torchvision)."
        ) from exc
    return torchvision.ops


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, by decreasing score."""
    return tv_ops().nms(boxes, scores, float(iou_threshold))


def nms_top(boxes: Tensor, scores: Tensor, iou_threshold: float, k: int, first: int = 1024) -> Tensor:
    """``nms(boxes, scores, iou_threshold)[:k]`` for boxes already sorted by decreasing score, but cheaper.

    Greedy NMS decides each box from the boxes ranked above it only, so the
    boxes NMS keeps among the first ``m`` are exactly the kept boxes of the
    whole list that rank in the first ``m``. Once a prefix keeps ``k`` boxes,
    the rest of the list cannot change the first ``k``: the prefix starts at
    ``max(first, 2k)`` boxes and doubles until it keeps ``k`` or covers the
    list. NMS costs about the square of its input, so on a 640 px tile (6,000
    RPN candidates, 1,000 kept) this is ~8x cheaper and returns the same
    indices (up to the order of exactly tied scores).

    Args:
        boxes: ``(N, 4)`` sorted by decreasing ``scores``.
        scores: ``(N,)`` non-increasing.
        iou_threshold: suppress boxes overlapping a kept box by more than this.
        k: number of kept boxes wanted.
        first: smallest prefix tried.
    """
    n = boxes.shape[0]
    m = min(n, max(int(first), 2 * int(k)))
    while True:
        keep = nms(boxes[:m], scores[:m], iou_threshold)
        if keep.numel() >= k or m >= n:
            return keep[:k]
        m = min(n, 2 * m)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category of ``idxs`` (boxes of different categories never suppress each other)."""
    return tv_ops().batched_nms(boxes, scores, idxs, float(iou_threshold))


def ps_roi_align(maps: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> Tensor:
    """Position-sensitive RoI align (R-FCN): ``(K, C / output_size², output_size, output_size)``.

    Args:
        maps: ``(B, C, H, W)`` score maps, ``C`` a multiple of ``output_size²``.
        rois: ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)`` in input pixels.
        output_size: bins per side.
        spatial_scale: map cells per input pixel.
        sampling_ratio: samples per bin side.
    """
    return tv_ops().ps_roi_align(maps, rois, int(output_size), float(spatial_scale), int(sampling_ratio))


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """``(N, M)`` intersection over union (evaluation's numpy twin: :func:`geors.evaluate.box_iou`)."""
    return tv_ops().box_iou(a, b)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes clipped to an image of ``size = (height, width)``."""
    return tv_ops().clip_boxes_to_image(boxes, size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``."""
    return tv_ops().remove_small_boxes(boxes, float(min_size))


_MAX_LOG_SCALE = math.log(1000.0 / 16)


class BoxCoder:
    """Faster R-CNN box parameterisation (Girshick et al.) with per-term weights.

    A box relative to a reference box of centre ``(x, y)`` and size ``(w, h)``
    is ``(wx·dx/w, wy·dy/h, ww·log(w'/w), wh·log(h'/h))``; decoding clamps the
    log-size terms at ``log(1000/16)`` so a wild regression cannot overflow.

    Args:
        weights: ``(wx, wy, ww, wh)``.
    """

    def __init__(self, weights: tuple[float, float, float, float]):
        self.weights = tuple(float(v) for v in weights)

    @staticmethod
    def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h

    def encode_single(self, targets: Tensor, references: Tensor) -> Tensor:
        """``(N, 4)`` regression targets of ``targets`` relative to ``references`` (both ``(N, 4)``)."""
        wx, wy, ww, wh = self.weights
        rx, ry, rw, rh = self._centre_size(references)
        tx, ty, tw, th = self._centre_size(targets)
        return torch.stack(
            [wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * torch.log(tw / rw), wh * torch.log(th / rh)], dim=1
        )

    def decode_single(self, codes: Tensor, references: Tensor) -> Tensor:
        """Inverse of :meth:`encode_single`: ``(N, 4)`` boxes from codes relative to ``references``."""
        wx, wy, ww, wh = self.weights
        codes = codes.to(references.dtype)
        rx, ry, rw, rh = self._centre_size(references)
        cx = codes[:, 0] / wx * rw + rx
        cy = codes[:, 1] / wy * rh + ry
        w = torch.exp((codes[:, 2] / ww).clamp(max=_MAX_LOG_SCALE)) * rw
        h = torch.exp((codes[:, 3] / wh).clamp(max=_MAX_LOG_SCALE)) * rh
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)
