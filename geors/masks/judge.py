"""The judge of a weight-free outline: keep it only when it is plausibly better than its box, else the box.

A candidate mask ``M`` lies inside its prompt box ``B``. Two facts frame the
decision:

- If ``M`` were the true object, the box would still score
  ``IoU(B, M) = fill = |M| / |B|``; if the box were the true object, ``M``
  would score the same ``fill``. Keeping the outline is a bet whose stake
  grows with ``1 - fill``, and an outline is never pixel-exact (a 1 px
  boundary error costs ~10 % IoU on a 20 px object) while the box of a
  box-shaped object is. And a box is drawn tight around its object, so an
  object shaped like a rectangle aligned with the image *is* its box. Hence
  the box-like test: an outline that fills its own bounding rectangle by more
  than ``max_rectangularity`` (a rectangle, a parapet or a ridge away from the
  box's sides, a region that nearly fills the box; ``rectangularity >= fill``
  always) gives the box. Buildings that fill their envelope get the box this
  way.
- An outline is only worth more than the box when its evidence is clear:
  it covers enough of the box (``fill``), spans it (``extent``), is one
  compact piece (``compactness``: no ragged leaks), its border lies on strong
  image edges (``edge_score``), and the part of the box it leaves out looks
  like the ground around the box, not like the outline itself
  (``separation``: an outline that stopped at a roof ridge or at a shadow on a
  crown leaves out a part that looks like the object), and the box's sides
  that the outline does not reach carry no strong edge (``side_edge``: a
  tight box touches its object, so where the outline stops short of a side
  that lies on a strong edge, the object most likely reaches that side).

Every test is a threshold on one feature; a candidate that fails any is
replaced by the box (``box:fallback``). The thresholds
(:data:`DEFAULT_THRESHOLDS`) were chosen by leave-one-kind-out
cross-validation over vehicles, trees and a building proxy, losses against
the box weighted four times gains (``python benchmarks/bench_masks.py --cv``,
``docs/masks.md``), not on one data set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MaskJudgement", "JudgeThresholds", "DEFAULT_THRESHOLDS", "mask_features", "judge_mask", "decide"]


@dataclass(frozen=True)
class JudgeThresholds:
    """Limits of :func:`judge_mask`; an outline is kept only when every test passes."""

    min_fill: float = 0.3  # least mask / box pixels (a speck is not the object)
    min_extent: float = 0.8  # least mask span / box span, in x and in y
    max_rectangularity: float = 0.85  # most mask / its own bounding rectangle (box-shaped: keep the box)
    min_compactness: float = 0.25  # least 4 pi A / P^2
    min_edge_score: float = 0.6  # least g_border / (g_border + g_box)
    min_separation: float = 0.4  # least d(left-out, mask) / (d(left-out, mask) + d(left-out, ground))
    max_side_edge: float = 0.7  # most g_side / (g_side + g_box) on the box's sides that the mask does not reach

    def tests(self, f: dict) -> list[tuple[object, str]]:
        """Each test's outcome on features ``f`` (:func:`mask_features`; scalars or numpy arrays) and its name."""
        return [
            (f["fill"] >= self.min_fill, "fill"),
            (f["rectangularity"] <= self.max_rectangularity, "box-like"),
            (f["extent"] >= self.min_extent, "extent"),
            (f["compactness"] >= self.min_compactness, "compactness"),
            # a region that fills the box has (almost) no inner border to check against edges
            ((f["edge_score"] >= self.min_edge_score) | (f["fill"] >= 0.97), "edges"),
            (f["separation"] >= self.min_separation, "separation"),
            (f["side_edge"] <= self.max_side_edge, "side edge"),
        ]

    def failed(self, f: dict) -> str:
        """Name of the first failed test for the features of one mask, "" when all pass."""
        return next((name for ok, name in self.tests(f) if not ok), "")

    def passes(self, f: dict) -> np.ndarray:
        """Whether each mask passes every test (``f`` holds arrays of features, one value per mask)."""
        return np.logical_and.reduce([np.asarray(ok) for ok, _ in self.tests(f)])


#: The judge's defaults (see the module docstring for how they were chosen).
DEFAULT_THRESHOLDS = JudgeThresholds()


@dataclass(frozen=True)
class MaskJudgement:
    """Features of a candidate mask inside its box and the verdict (see :func:`judge_mask`)."""

    fill: float  # mask pixels / box pixels
    extent: float  # min over x, y of (mask span / box span)
    compactness: float  # 4 pi A / P^2 (1 = disc)
    edge_score: float  # g_border / (g_border + g_box), 0.5 = no better than the box's pixels
    ok: bool
    reason: str = ""
    rectangularity: float = 0.0  # mask pixels / pixels of the mask's own bounding rectangle
    separation: float = 1.0  # 1 = the left-out part looks like the ground, 0 = like the mask
    side_edge: float = 0.0  # g_side / (g_side + g_box): edges on the box sides the mask does not reach

    def features(self) -> dict:
        d = asdict(self)
        d.pop("ok")
        d.pop("reason")
        return d


def _mean_colour(image: np.ndarray, sel: np.ndarray) -> np.ndarray | None:
    return image[sel].reshape(-1, image.shape[-1]).astype(np.float64).mean(axis=0) if sel.any() else None


def mask_features(mask: np.ndarray, in_box: np.ndarray, grad: np.ndarray, image: np.ndarray | None = None) -> dict:
    """Features of a candidate mask inside its box.

    Args:
        mask: bool (h, w) candidate, already cut to the box.
        in_box: bool (h, w), the box's pixels (the crop has pixels outside the box: the ground around it).
        grad: float (h, w) gradient magnitude of the (smoothed) image.
        image: (h, w, C) colour image of the crop (e.g. Lab) for ``separation``; None gives separation 1.

    Returns:
        Dict ``fill``, ``extent``, ``rectangularity``, ``compactness``, ``edge_score``, ``separation``
        (all 0 for an empty mask).
    """
    import cv2

    n_box = int(in_box.sum())
    area = int(mask.sum())
    if n_box == 0 or area == 0:
        return dict(fill=0.0, extent=0.0, rectangularity=0.0, compactness=0.0, edge_score=0.0, separation=0.0,
                    side_edge=1.0)
    fill = area / n_box
    br = np.flatnonzero(in_box.any(axis=1))
    bc = np.flatnonzero(in_box.any(axis=0))
    mr = np.flatnonzero(mask.any(axis=1))
    mc = np.flatnonzero(mask.any(axis=0))
    extent = min((mr[-1] - mr[0] + 1) / (br[-1] - br[0] + 1), (mc[-1] - mc[0] + 1) / (bc[-1] - bc[0] + 1))
    rectangularity = area / ((mr[-1] - mr[0] + 1) * (mc[-1] - mc[0] + 1))
    m8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    compactness = float(min(1.0, 4 * math.pi * area / perimeter**2)) if perimeter > 0 else 0.0
    # the mask's own border, without the stretches where it runs along the box edge
    k = np.ones((3, 3), np.uint8)
    border = (m8 - cv2.erode(m8, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)).astype(bool)
    box_inner = cv2.erode(in_box.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    inner_border = border & box_inner
    g_box = float(grad[in_box].mean())
    # the box's own sides where the mask does not reach them: ground for a tight box, unless the object is there
    sides = in_box & ~box_inner & ~cv2.dilate(m8, k).astype(bool)
    g_side = float(grad[sides].mean()) if sides.sum() >= 3 else 0.0
    side_edge = g_side / (g_side + g_box) if (g_side + g_box) > 0 else 0.0
    if inner_border.sum() < 3:  # the mask is (almost) the whole box: nothing to check against edges
        edge_score = 0.5
    else:
        g_border = float(grad[inner_border].mean())
        edge_score = g_border / (g_border + g_box) if (g_border + g_box) > 0 else 0.5
    if fill >= 0.97:  # the region is the box: its few inner border pixels say nothing about edges
        edge_score = max(edge_score, 0.5)
    separation = 1.0
    if image is not None:
        left_out, ground = in_box & ~mask, ~in_box
        c_out, c_in, c_ground = _mean_colour(image, left_out), _mean_colour(image, mask), _mean_colour(image, ground)
        if c_out is not None and c_ground is not None:
            d_in, d_ground = float(np.linalg.norm(c_out - c_in)), float(np.linalg.norm(c_out - c_ground))
            separation = d_in / (d_in + d_ground) if d_in + d_ground > 0 else 0.5
    return dict(fill=float(fill), extent=float(extent), rectangularity=float(rectangularity), compactness=compactness,
                edge_score=float(edge_score), separation=float(separation), side_edge=float(side_edge))


def decide(features: dict, thresholds: JudgeThresholds = DEFAULT_THRESHOLDS) -> MaskJudgement:
    """The verdict on features from :func:`mask_features`."""
    reason = "empty" if features["fill"] <= 0 else thresholds.failed(features)
    return MaskJudgement(features["fill"], features["extent"], features["compactness"], features["edge_score"],
                         not reason, reason, features["rectangularity"], features["separation"], features["side_edge"])


def judge_mask(mask: np.ndarray, in_box: np.ndarray, grad: np.ndarray, image: np.ndarray | None = None,
               thresholds: JudgeThresholds | None = None, **limits: float) -> MaskJudgement:
    """Judge a candidate mask against its box and the image (module docstring).

    Args:
        mask: bool (h, w) candidate, already cut to the box.
        in_box: bool (h, w), the box's pixels.
        grad: float (h, w) gradient magnitude of the (smoothed) image.
        image: (h, w, C) colour crop (Lab in the watershed engine) for the separation test.
        thresholds: the limits (default :data:`DEFAULT_THRESHOLDS`).
        **limits: single limits overriding ``thresholds`` (``min_fill=0.5``, ...).

    Returns:
        A :class:`MaskJudgement`; ``ok`` is False with the first failed test in ``reason``
        (``empty``, ``fill``, ``box-like``, ``extent``, ``compactness``, ``edges``, ``separation``).
    """
    from dataclasses import replace

    t = replace(thresholds or DEFAULT_THRESHOLDS, **limits)
    return decide(mask_features(mask, in_box, grad, image), t)
