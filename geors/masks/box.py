"""The box itself as the mask."""

from __future__ import annotations

import numpy as np

from geors.masks.base import MaskEngine, box_crop, check_image
from geors.masks.boxes import MaskCrop, as_boxes

__all__ = ["BoxEngine"]


class BoxEngine(MaskEngine):
    """The box itself as the mask (pixels whose centre lies in the box), score 1.0."""

    method = "box"

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        check_image(image_rgb8)
        h, w = image_rgb8.shape[:2]
        return [box_crop(b, w, h) for b in as_boxes(boxes_xyxy)]
