"""The mask engine interface: an RGB image and boxes in, mask crops out."""

from __future__ import annotations

import numpy as np

from geors.masks.prompts import MaskCrop, clip_window

__all__ = ["MaskEngine", "check_image", "box_crop", "BOX", "FALLBACK"]

BOX = "box"
FALLBACK = "box:fallback"  # mask_method of an object for which an engine kept the box


class MaskEngine:
    """Turns an RGB image and boxes into instance masks.

    Subclasses implement :meth:`predict_crops`; :meth:`predict` gives full-size
    masks for convenience (memory N x H x W, prefer crops for many boxes).
    """

    method: str = "base"
    #: False for engines whose masks depend on the boxes only (the pipeline then reads no pixels for them).
    needs_pixels: bool = True

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
        check_image(image_rgb8)
        h, w = image_rgb8.shape[:2]
        crops = self.predict_crops(image_rgb8, boxes_xyxy)
        masks = np.zeros((len(crops), h, w), dtype=bool)
        for i, c in enumerate(crops):
            ch, cw = c.mask.shape
            masks[i, c.row_off : c.row_off + ch, c.col_off : c.col_off + cw] = c.mask
        return masks, np.array([c.score for c in crops], dtype=np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r})"


def check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array, got shape {shape} dtype {dtype}")


def box_crop(box: np.ndarray, width: int, height: int, score: float = 1.0, method: str = BOX) -> MaskCrop:
    """The box as a mask crop: pixels whose centre lies in the box (``method`` "box" or "box:fallback")."""
    c0, r0, c1, r1 = clip_window(box, width, height, 0.0)
    # pixel centres inside the box
    cols = np.arange(c0, c1) + 0.5
    rows = np.arange(r0, r1) + 0.5
    m = ((rows[:, None] >= box[1]) & (rows[:, None] <= box[3])) & ((cols[None, :] >= box[0]) & (cols[None, :] <= box[2]))
    if not m.any() and c1 > c0 and r1 > r0:  # sub-pixel box: keep the pixel(s) it touches
        m[:] = True
    return MaskCrop(m, r0, c0, float(score), method)
