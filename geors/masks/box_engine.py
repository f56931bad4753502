"""The box itself as the mask."""

from __future__ import annotations

import numpy as np

from geors.masks.base import MaskEngine, box_crop, check_image
from geors.masks.prompts import MaskCrop, as_boxes

__all__ = ["BoxEngine"]


class BoxEngine(MaskEngine):
    """The box itself as the mask (pixels whose centre lies in the box), score 1.0."""

    method = "box"
    needs_pixels = False

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        check_image(image_rgb8)
        h, w = image_rgb8.shape[:2]
        return self.predict_boxes(boxes_xyxy, w, h)

    def predict_boxes(self, boxes_xyxy: np.ndarray, width: int, height: int) -> list[MaskCrop]:
        """Masks of boxes in a ``width x height`` image without its pixels (:attr:`needs_pixels` is False)."""
        return [box_crop(b, width, height) for b in as_boxes(boxes_xyxy)]
