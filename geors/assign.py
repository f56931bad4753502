"""Normalized Wasserstein Distance and rank-based label assignment (NWD-RKA).

Pure, vectorised tensor functions used by the RPN of :mod:`geors.models.r2cnn`.
All boxes are ``(N, 4)`` tensors in ``x1, y1, x2, y2`` pixel coordinates.

A box ``(cx, cy, w, h)`` is modelled as a 2-D Gaussian with mean ``(cx, cy)``
and covariance ``diag(w^2/4, h^2/4)``. The squared 2-Wasserstein distance of two
such Gaussians is ``(cxa-cxb)^2 + (cya-cyb)^2 + ((wa-wb)/2)^2 + ((ha-hb)/2)^2``
and ``NWD = exp(-sqrt(W2^2 + eps) / C)`` (Xu et al., ISPRS J. 2022). Unlike IoU,
NWD stays informative for boxes that do not overlap, which matters for objects
only a few pixels wide.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nwd_matrix", "rank_assign", "DEFAULT_NWD_C", "NWD_EPS"]

DEFAULT_NWD_C = 12.7
"""NWD normalising constant in pixels (mean absolute object size of AI-TOD-v2)."""

NWD_EPS = 1e-6
"""Added inside the square root, as in the reference code (keeps gradients finite)."""


def _cxcywh(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1


def nwd_matrix(boxes_a: Tensor, boxes_b: Tensor, c: float = DEFAULT_NWD_C) -> Tensor:
    """Pairwise Normalized Wasserstein Distance between two sets of boxes.

    Args:
        boxes_a: ``(N, 4)`` boxes, ``x1, y1, x2, y2`` in pixels.
        boxes_b: ``(M, 4)`` boxes, same layout and units.
        c: normalising constant in pixels (> 0); the mean object size of the
            training data is the principled choice, 12.7 the paper's default.

    Returns:
        ``(N, M)`` float tensor with values in ``(0, 1]``; 1 only for identical
        boxes (up to ``eps``), strictly positive for disjoint boxes.

    Raises:
        ValueError: if ``c`` is not positive.
    """
    if not c > 0:
        raise ValueError(f"NWD constant c must be > 0 pixels, got {c}")
    a = boxes_a.float()
    b = boxes_b.float()
    acx, acy, aw, ah = (t[:, None] for t in _cxcywh(a))
    bcx, bcy, bw, bh = (t[None, :] for t in _cxcywh(b))
    w2 = (acx - bcx) ** 2 + (acy - bcy) ** 2 + ((aw - bw) * 0.5) ** 2 + ((ah - bh) * 0.5) ** 2
    return torch.exp(-torch.sqrt(w2 + NWD_EPS) / c)


def rank_assign(
    gt_boxes: Tensor,
    anchors: Tensor,
    k: int = 2,
    neg_threshold: float = 0.3,
    c: float = DEFAULT_NWD_C,
) -> tuple[Tensor, Tensor]:
    """Rank-based assignment (RKA) of anchors to ground truths by NWD.

    Rules (each chosen deliberately; the reference code differs where noted):

    * **Positives**: for every ground truth, its ``k`` anchors with the highest
      NWD. ``k`` is capped at the number of anchors (the reference ``topk``
      fails when there are fewer anchors than ``k``).
    * **Ties**: exactly ``k`` per ground truth. Anchors strictly above the
      k-th best value are always taken; among anchors *equal* to it, the lowest
      anchor indices fill the remaining places (stable tie-break). The
      reference code takes every tied anchor, so a gt can get more than ``k``.
    * **Shared anchors**: an anchor in the top-k of several ground truths goes
      to the one with the highest NWD to it (lowest gt index on equal NWD). The
      reference code lets the later gt overwrite the earlier one. The losing
      gt is not given a replacement anchor, so it keeps ``k - 1`` (or fewer)
      positives; this only happens for near-coincident boxes.
    * **Negatives**: anchors that are not positive and whose best NWD with any
      ground truth is below ``neg_threshold`` (as in the reference code).
    * **Ignored** (``-1``): all other anchors: close to a ground truth but not
      in its top-k. The paper text makes them negatives; geors follows the
      reference code because these anchors are near-duplicates of positives.
    * With no ground truth every anchor is negative.

    Args:
        gt_boxes: ``(G, 4)`` ground-truth boxes, ``x1, y1, x2, y2`` pixels.
        anchors: ``(A, 4)`` anchors, same layout and units.
        k: positives per ground truth (2 in the paper for Faster R-CNN).
        neg_threshold: NWD below which a non-positive anchor is negative.
        c: NWD constant in pixels, see :func:`nwd_matrix`.

    Returns:
        ``labels``: ``(A,)`` int64, 1 positive / 0 negative / -1 ignored;
        ``matched``: ``(A,)`` int64 index into ``gt_boxes`` for positives,
        -1 elsewhere.
    """
    n_anchors = anchors.shape[0]
    device = anchors.device
    labels = torch.zeros(n_anchors, dtype=torch.int64, device=device)
    matched = torch.full((n_anchors,), -1, dtype=torch.int64, device=device)
    n_gt = gt_boxes.shape[0]
    if n_anchors == 0 or n_gt == 0:
        return labels, matched
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, n_anchors)

    nwd = nwd_matrix(gt_boxes, anchors, c)  # (G, A)
    kth = nwd.topk(k, dim=1).values[:, -1:]  # (G, 1) k-th best value per gt
    above = nwd > kth
    tied = nwd == kth
    need = k - above.sum(dim=1, keepdim=True)  # places left for tied anchors
    tie_rank = torch.cumsum(tied.to(torch.int64), dim=1)  # 1-based order by anchor index
    selected = above | (tied & (tie_rank <= need))  # exactly k True per row

    # An anchor selected by several gts goes to the gt with the highest NWD.
    cand = torch.where(selected, nwd, torch.full_like(nwd, -1.0))
    best_val, best_gt = cand.max(dim=0)  # max returns the first index on ties
    is_pos = best_val >= 0

    max_nwd = nwd.max(dim=0).values
    labels.fill_(-1)
    labels[max_nwd < neg_threshold] = 0
    labels[is_pos] = 1
    matched[is_pos] = best_gt[is_pos]
    return labels, matched
