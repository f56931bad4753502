"""Training-time label assignment of R2-CNN: the IoU matcher and the balanced positive/negative sampler.

These follow the Faster R-CNN recipe (Ren et al., NeurIPS 2015):

* :class:`IoUMatcher`: each candidate (anchor or proposal) takes the ground-truth
  box it overlaps most. At IoU ``>= high`` it is matched; below ``low`` it is
  background (:data:`BELOW_LOW`); in between it is ignored (:data:`BETWEEN`).
  With ``keep_best`` every ground-truth box also keeps the candidates that
  overlap it best, however low that overlap, so no object is left without a
  positive.
* :class:`BalancedSampler`: per image, at most ``batch * positive_fraction``
  positives drawn at random, negatives filling the rest of ``batch``.

Inference never calls these.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IoUMatcher", "BalancedSampler", "BELOW_LOW", "BETWEEN"]

#: Match index of a candidate below the low threshold: background.
BELOW_LOW = -1
#: Match index of a candidate between the thresholds: neither positive nor negative.
BETWEEN = -2


class IoUMatcher:
    """Match candidates to ground-truth boxes by IoU.

    Args:
        high: IoU from which a candidate is matched.
        low: IoU below which a candidate is background (``low <= high``).
        keep_best: every ground-truth box keeps its best-overlapping candidates.
    """

    def __init__(self, high: float, low: float, keep_best: bool = False):
        if low > high:
            raise ValueError(f"low ({low}) must not exceed high ({high})")
        self.high, self.low, self.keep_best = float(high), float(low), bool(keep_best)

    def __call__(self, iou: Tensor) -> Tensor:
        """``(N,)`` int64 match of each candidate: a ground-truth index, :data:`BELOW_LOW` or :data:`BETWEEN`.

        Args:
            iou: ``(G, N)`` IoU of ``G >= 1`` ground-truth boxes with ``N`` candidates.
        """
        if iou.shape[0] == 0:
            raise ValueError("IoUMatcher needs at least one ground-truth box")
        best, match = iou.max(dim=0)
        out = match.clone()
        out[best < self.low] = BELOW_LOW
        out[(best >= self.low) & (best < self.high)] = BETWEEN
        if self.keep_best:
            best_per_truth = iou.max(dim=1, keepdim=True).values
            _, candidates = torch.nonzero(iou == best_per_truth, as_tuple=True)
            out[candidates] = match[candidates]
        return out


class BalancedSampler:
    """Draw a fixed-size, class-balanced subset of labelled candidates per image.

    Args:
        batch: candidates drawn per image (fewer when fewer are labelled).
        positive_fraction: largest share of positives in ``batch``.
    """

    def __init__(self, batch: int, positive_fraction: float):
        self.batch, self.positive_fraction = int(batch), float(positive_fraction)

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Masks of the drawn positives and negatives, one pair per image.

        Args:
            labels: per image, ``(N,)`` labels: ``>= 1`` positive, ``0`` negative, ``< 0`` ignored.

        Returns:
            ``(positive masks, negative masks)``: lists of ``(N,)`` uint8 tensors.
        """
        positives, negatives = [], []
        for lab in labels:
            pos = torch.nonzero(lab >= 1).flatten()
            neg = torch.nonzero(lab == 0).flatten()
            n_pos = min(pos.numel(), int(self.batch * self.positive_fraction))
            n_neg = min(neg.numel(), self.batch - n_pos)
            pos = pos[torch.randperm(pos.numel(), device=pos.device)[:n_pos]]
            neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
            pos_mask = torch.zeros_like(lab, dtype=torch.uint8)
            neg_mask = torch.zeros_like(lab, dtype=torch.uint8)
            pos_mask[pos] = 1
            neg_mask[neg] = 1
            positives.append(pos_mask)
            negatives.append(neg_mask)
        return positives, negatives
