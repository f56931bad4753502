"""Box and detection ops for R2-CNN inference without importing torchvision's Python package.

``import torchvision`` imports ``torchvision.models``, ``datasets`` and ``ops``,
and ``torchvision.ops.roi_align`` imports ``torch._dynamo``: measured on the
PyPI CUDA wheels (torch 2.14, torchvision 0.29) that is +160 MiB of resident
memory and ~1.2 s per process, a sixth of what ``geors run`` needs in total.
Inference needs only two compiled kernels (``nms`` and ``ps_roi_align``),
which live in torchvision's extension library and register themselves as
``torch.ops.torchvision.*`` when it is loaded. :func:`kernels` loads that
library directly (falling back to ``import torchvision`` where that fails,
e.g. on platforms that need torchvision's DLL set-up); everything else here is
a few lines of tensor arithmetic.

Boxes are ``(N, 4)`` float tensors ``x1, y1, x2, y2`` in pixels.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import threading

import torch
from torch import Tensor

from geors.errors import DependencyNotFoundError

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_iou",
    "clip_boxes_to_image",
    "kernels",
    "nms",
    "nms_top",
    "ps_roi_align",
    "remove_small_boxes",
]

_lock = threading.Lock()
_loaded = False


def _registered() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access raises when the op is not registered
        torch.ops.torchvision.ps_roi_align  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def kernels():
    """``torch.ops.torchvision`` with ``nms`` and ``ps_roi_align`` registered (loaded once per process)."""
    global _loaded
    if _loaded:
        return torch.ops.torchvision
    with _lock:
        if not _loaded:
            if not _registered():
                spec = importlib.util.find_spec("torchvision")
                libs = []
                if spec is not None and spec.submodule_search_locations:
                    root = list(spec.submodule_search_locations)[0]
                    libs = sorted(glob.glob(os.path.join(root, "_C*.so")))
                for lib in libs:
                    try:
                        torch.ops.load_library(lib)
                    except OSError:
                        continue
                    if _registered():
                        break
                if not _registered():
                    import torchvision  # noqa: F401 - registers the ops the documented way

                    if not _registered():
                        raise DependencyNotFoundError(
                            "torchvision's compiled ops (nms, ps_roi_align) are not available: "
                            "reinstall torch and torchvision from the same release "
                            "(pip install --force-reinstall torch torchvision)."
                        )
            _loaded = True
    return torch.ops.torchvision


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, by decreasing score."""
    return kernels().nms(boxes, scores, float(iou_threshold))


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
    """NMS within each category of ``idxs`` (boxes of different categories never suppress each other).

    The boxes of each category are shifted by a different offset larger than
    any coordinate, so one NMS call cannot match boxes across categories.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def ps_roi_align(maps: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int) -> Tensor:
    """Position-sensitive RoI align (R-FCN): ``(K, C / output_size², output_size, output_size)``.

    Args:
        maps: ``(B, C, H, W)`` score maps, ``C`` a multiple of ``output_size²``.
        rois: ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)`` in input pixels.
        output_size: bins per side.
        spatial_scale: map cells per input pixel.
        sampling_ratio: samples per bin side.
    """
    out, _ = kernels().ps_roi_align(maps, rois, float(spatial_scale), int(output_size), int(output_size),
                                    int(sampling_ratio))
    return out


def box_area(boxes: Tensor) -> Tensor:
    """``(N,)`` areas."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """``(N, M)`` intersection over union."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes clipped to an image of ``size = (height, width)``."""
    h, w = size
    x = boxes[:, 0::2].clamp(min=0, max=w)
    y = boxes[:, 1::2].clamp(min=0, max=h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return torch.nonzero((w >= min_size) & (h >= min_size)).flatten()


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
