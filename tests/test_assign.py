import math

import pytest
import torch
from torchvision.ops import box_iou

from geors.assign import NWD_EPS, nwd_matrix, rank_assign


def test_nwd_matches_hand_computation():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # cx 5, cy 5, w 10, h 10
    b = torch.tensor([[5.0, 0.0, 15.0, 20.0]])  # cx 10, cy 10, w 10, h 20
    w2 = (5 - 10) ** 2 + (5 - 10) ** 2 + ((10 - 10) / 2) ** 2 + ((10 - 20) / 2) ** 2  # 75
    expected = math.exp(-math.sqrt(w2 + NWD_EPS) / 12.7)
    assert nwd_matrix(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert nwd_matrix(a, b, c=8.0).item() == pytest.approx(math.exp(-math.sqrt(w2 + NWD_EPS) / 8.0), rel=1e-6)


def test_nwd_range_symmetry_and_shape():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(7, 2, generator=g) * 100
    wh = torch.rand(7, 2, generator=g) * 20 + 1
    a = torch.cat([xy, xy + wh], 1)
    b = a[:4] + 3.0
    m = nwd_matrix(a, b)
    assert m.shape == (7, 4)
    assert torch.all(m > 0) and torch.all(m <= 1)
    assert torch.allclose(nwd_matrix(b, a), m.T)
    # identical boxes: only eps keeps it below 1
    assert torch.allclose(torch.diagonal(nwd_matrix(a, a)), torch.full((7,), math.exp(-math.sqrt(NWD_EPS) / 12.7)))


def test_nwd_informative_for_disjoint_tiny_boxes():
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    near = torch.tensor([[6.0, 0.0, 10.0, 4.0]])
    far = torch.tensor([[20.0, 0.0, 24.0, 4.0]])
    assert box_iou(gt, near).item() == 0 and box_iou(gt, far).item() == 0
    n_near, n_far = nwd_matrix(gt, near).item(), nwd_matrix(gt, far).item()
    assert n_far > 0
    assert n_near > n_far  # IoU cannot rank these, NWD can


def test_nwd_rejects_bad_constant():
    with pytest.raises(ValueError):
        nwd_matrix(torch.zeros(1, 4), torch.zeros(1, 4), c=0)


def _grid_anchors(n=10, stride=8.0, sizes=(8.0, 16.0)):
    out = []
    for y in range(n):
        for x in range(n):
            for s in sizes:
                cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
                out.append([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2])
    return torch.tensor(out)


def test_rank_assign_gives_k_positives_per_gt():
    anchors = _grid_anchors()
    gts = torch.tensor([[10.0, 10.0, 14.0, 14.0], [40.0, 50.0, 60.0, 66.0], [70.0, 5.0, 73.0, 8.0]])
    for k in (1, 2, 3, 5):
        labels, matched = rank_assign(gts, anchors, k=k)
        for g in range(3):
            assert int(((labels == 1) & (matched == g)).sum()) == k
        # positives are the top-k by NWD of their gt
        nwd = nwd_matrix(gts, anchors)
        for g in range(3):
            pos = torch.nonzero((labels == 1) & (matched == g)).flatten()
            assert nwd[g, pos].min() >= nwd[g].topk(k).values[-1] - 1e-7
    assert torch.all(matched[labels != 1] == -1)


def test_rank_assign_negatives_and_ignored():
    anchors = _grid_anchors()
    gts = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    labels, _ = rank_assign(gts, anchors, k=2, neg_threshold=0.3)
    best = nwd_matrix(gts, anchors).max(0).values
    assert torch.all(labels[(best < 0.3)] == 0)
    assert torch.all(labels[(best >= 0.3) & (labels != 1)] == -1)
    assert int((labels == -1).sum()) > 0


def test_rank_assign_ties_capped_at_k_with_stable_order():
    # four identical anchors: all tie for the gt; exactly k, lowest indices win
    box = [0.0, 0.0, 10.0, 10.0]
    anchors = torch.tensor([[50.0, 50.0, 60.0, 60.0]] + [box] * 4)
    labels, matched = rank_assign(torch.tensor([[1.0, 1.0, 9.0, 9.0]]), anchors, k=2)
    assert labels.tolist()[1:3] == [1, 1]
    assert 1 not in labels.tolist()[3:]
    assert int((labels == 1).sum()) == 2


def test_rank_assign_shared_anchor_goes_to_best_gt():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    # both gts have anchor 0 as best (k=1); gt 1 is closer to it, gt 0 is listed first
    gts = torch.tensor([[1.0, 1.0, 11.0, 11.0], [0.0, 0.0, 10.0, 10.5]])
    labels, matched = rank_assign(gts, anchors, k=1)
    assert labels[0].item() == 1 and matched[0].item() == 1
    # order of gts does not change the winner (not "later overwrites")
    labels2, matched2 = rank_assign(gts.flip(0), anchors, k=1)
    assert matched2[0].item() == 0


def test_rank_assign_fewer_anchors_than_k_and_empty_inputs():
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    labels, matched = rank_assign(torch.tensor([[1.0, 1.0, 5.0, 5.0]]), anchors, k=4)
    assert labels.tolist() == [1] and matched.tolist() == [0]
    labels, matched = rank_assign(torch.zeros(0, 4), _grid_anchors(2), k=2)
    assert torch.all(labels == 0) and torch.all(matched == -1)
    labels, matched = rank_assign(torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.zeros(0, 4), k=2)
    assert labels.numel() == 0
