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
  separates less than 5 % of the box (``min_fill``) or labels at least 98 % of
  it foreground (``max_fill``: it separated nothing, typical for objects packed
  among look-alikes, e.g. contiguous tree crowns, where the background model
  explains the box too) it has failed and the box itself is returned with
  score 0.0 and method ``box:fallback``.
- ``watershed``: weight-free and the default without SAM
  (:class:`WatershedEngine`): a marker watershed of the smoothed Lab image,
  seeded with the box centre (object) and the pixels around the box
  (background), cut to the box; each mask is judged (:mod:`geors.masks.judge`:
  fill, extent, not box-shaped, compactness, border on image edges, left-out
  part like the ground, no strong edge on the box sides it does not reach)
  and the box is kept unless the outline is plausibly better. ``mask_score`` is the edge
  agreement in (0, 1). Chosen by measurement (``benchmarks/bench_masks.py``,
  ``docs/masks.md``): it beats the box on real vehicle outlines where GrabCut
  does not, at ~2-4 ms per box on one CPU core.
- ``box``: the box itself, score 1.0.

``mask_method`` is per object: each :class:`MaskCrop` and :class:`MaskResult`
carries the method that produced it (``sam:vit_b``, ``watershed``,
``grabcut``, ``box``) or ``box:fallback`` (:data:`FALLBACK`) when the engine
kept the box for that object (GrabCut separated nothing, the watershed mask
was implausible, SAM's mask was empty); score 0.0 then. ``auto`` is SAM vit_b
when a checkpoint is found, else ``watershed`` with one warning saying how to
get SAM.

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
with ``Scene.read_window`` and decodes on its own. :func:`instances_for_tile` does this.
"""

from __future__ import annotations

from geors.masks.base import FALLBACK, MaskEngine
from geors.masks.box_engine import BoxEngine
from geors.masks.factory import make_mask_engine
from geors.masks.grabcut import GrabCutEngine
from geors.masks.judge import DEFAULT_THRESHOLDS, JudgeThresholds, judge_mask
from geors.masks.polygons import mask_to_geometry
from geors.masks.prompts import MaskCrop, MaskResult, box_fits, box_window, rh_box
from geors.masks.sam import SAM_KINDS, SamBoxPredictor, SamEngine
from geors.masks.tile import instances_for_tile
from geors.masks.watershed import WatershedEngine

__all__ = [
    "MaskCrop",
    "MaskResult",
    "MaskEngine",
    "FALLBACK",
    "BoxEngine",
    "GrabCutEngine",
    "WatershedEngine",
    "judge_mask",
    "JudgeThresholds",
    "DEFAULT_THRESHOLDS",
    "SamEngine",
    "SamBoxPredictor",
    "SAM_KINDS",
    "make_mask_engine",
    "rh_box",
    "box_fits",
    "box_window",
    "mask_to_geometry",
    "instances_for_tile",
]
