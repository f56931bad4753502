"""GrabCut (OpenCV) initialised with the box: no weights."""

from __future__ import annotations

import logging

import numpy as np

from geors.masks.base import FALLBACK, MaskEngine, box_crop, check_image
from geors.masks.prompts import MaskCrop, as_boxes, clip_window

__all__ = ["GrabCutEngine"]

log = logging.getLogger(__name__)


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
        max_fill: when at least this fraction of the box is foreground,
            GrabCut separated nothing inside the box: the box is returned
            with score 0.0 and ``method = "box:fallback"`` too.
    """

    method = "grabcut"

    def __init__(self, iterations: int = 3, margin: float = 0.25, min_margin_px: int = 8, seed: int = 0,
                 min_fill: float = 0.05, max_fill: float = 0.98):
        self.min_fill = float(min_fill)
        self.max_fill = float(max_fill)
        self.iterations = int(iterations)
        self.margin = float(margin)
        self.min_margin_px = int(min_margin_px)
        self.seed = seed

    def _one(self, image: np.ndarray, box: np.ndarray) -> MaskCrop:
        import cv2

        h, w = image.shape[:2]
        bc0, br0, bc1, br1 = clip_window(box, w, h, 0.0)
        if bc1 - bc0 < 3 or br1 - br0 < 3:
            return box_crop(box, w, h, 0.0, FALLBACK)
        m = max(self.min_margin_px, int(round(self.margin * max(bc1 - bc0, br1 - br0))))
        # crop with margin, clipped to the image; the margin seeds the background model
        c0, r0 = max(bc0 - m, 0), max(br0 - m, 0)
        c1, r1 = min(bc1 + m, w), min(br1 + m, h)
        crop = np.ascontiguousarray(image[r0:r1, c0:c1, ::-1])  # OpenCV expects BGR
        gc = np.full(crop.shape[:2], cv2.GC_BGD, dtype=np.uint8)
        gc[br0 - r0 : br1 - r0, bc0 - c0 : bc1 - c0] = cv2.GC_PR_FGD
        if not (gc == cv2.GC_BGD).any():  # box covers the whole image: no background to learn from
            return box_crop(box, w, h, 0.0, FALLBACK)
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        try:
            # initialising with a mask equals GC_INIT_WITH_RECT when the rect touches no image edge,
            # and still works for boxes cut by the image edge (the rect would have no outside there)
            cv2.grabCut(crop, gc, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as exc:  # degenerate colour statistics (e.g. a flat crop)
            log.debug("grabCut failed for box %s: %s; using the box", box.tolist(), exc)
            return box_crop(box, w, h, 0.0, FALLBACK)
        fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        fg = fg[br0 - r0 : br1 - r0, bc0 - c0 : bc1 - c0]
        # nothing (or a speck) separated from the surroundings, or nothing separated inside the box
        if fg.mean() < self.min_fill or fg.mean() >= self.max_fill:
            return box_crop(box, w, h, 0.0, FALLBACK)
        return MaskCrop(fg, br0, bc0, float(fg.mean()), self.method)

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        import cv2

        check_image(image_rgb8)
        if self.seed is not None:
            cv2.setRNGSeed(int(self.seed))
        return [self._one(image_rgb8, b) for b in as_boxes(boxes_xyxy)]
