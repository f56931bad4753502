"""geors.models.ops (torchvision's public ops, imported on first use), the training matchers and samplers
of geors.models.matching, and batch-norm folding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.ops as tvo
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder

from geors.models import ops
from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.models.tinynet import fold_batchnorm


def random_boxes(n: int, size: float = 640.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = 8 + torch.rand(n, 2, generator=g) * 70
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(n, generator=g)
    order = scores.argsort(descending=True)
    return boxes[order], scores[order]


@pytest.mark.parametrize("k", [1, 50, 300, 1000, 5000])
def test_nms_top_equals_full_nms_truncated(k):
    boxes, scores = random_boxes(6000)
    full = tvo.nms(boxes, scores, 0.7)[:k]
    assert torch.equal(ops.nms_top(boxes, scores, 0.7, k), full)


def test_nms_top_grows_the_prefix_when_suppression_is_heavy():
    # many near-duplicates: the first prefix keeps fewer than k, the prefix must grow to stay exact
    base, _ = random_boxes(200, size=100.0, seed=1)
    boxes = base.repeat(20, 1) + torch.rand(4000, 1) * 0.5
    scores = torch.rand(4000)
    order = scores.argsort(descending=True)
    boxes, scores = boxes[order], scores[order]
    want = tvo.nms(boxes, scores, 0.5)[:150]
    assert torch.equal(ops.nms_top(boxes, scores, 0.5, 150, first=64), want)


def test_box_ops_are_torchvisions_public_ones():
    boxes, scores = random_boxes(500, seed=2)
    idxs = torch.randint(0, 3, (500,))
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.4), tvo.batched_nms(boxes, scores, idxs, 0.4))
    assert ops.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).numel() == 0
    maps = torch.rand(2, 6 * 49, 20, 24)
    rois = torch.cat([torch.randint(0, 2, (30, 1)).float(), boxes[:30] / 4], dim=1)
    assert torch.equal(ops.ps_roi_align(maps, rois, 7, 1 / 8, 2), tvo.ps_roi_align(maps, rois, 7, 1 / 8, 2))


def _iou_with_ties(g: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    iou = (torch.rand(g, n, generator=gen) * 10).round() / 10  # many exact ties, values on the thresholds
    iou[:, : n // 4] *= 0.2  # some candidates low for every box
    return iou


@pytest.mark.parametrize("high,low,keep_best", [(0.7, 0.3, True), (0.5, 0.5, False), (0.6, 0.4, False)])
def test_iou_matcher_follows_the_faster_rcnn_rule(high, low, keep_best):
    from torchvision.models.detection._utils import Matcher as Reference  # the reference, in tests only

    from geors.models.matching import BELOW_LOW, BETWEEN, IoUMatcher

    ours = IoUMatcher(high, low, keep_best=keep_best)
    ref = Reference(high, low, allow_low_quality_matches=keep_best)
    assert (BELOW_LOW, BETWEEN) == (Reference.BELOW_LOW_THRESHOLD, Reference.BETWEEN_THRESHOLDS)
    for seed in range(5):
        iou = _iou_with_ties(1 + seed, 300, seed)
        assert torch.equal(ours(iou), ref(iou))
    iou = torch.tensor([[0.1, 0.05, 0.8], [0.12, 0.0, 0.11]])  # box 1's best candidate is low: kept only with keep_best
    assert ours(iou).tolist() == ([1, BELOW_LOW, 0] if keep_best else [BELOW_LOW, BELOW_LOW, 0])


def test_balanced_sampler_draws_like_the_faster_rcnn_recipe():
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler as Reference

    from geors.models.matching import BalancedSampler

    gen = torch.Generator().manual_seed(0)
    labels = [torch.randint(-1, 3, (n,), generator=gen) for n in (500, 40, 0)] + [torch.zeros(300, dtype=torch.int64)]
    torch.manual_seed(7)
    pos, neg = BalancedSampler(64, 0.25)(labels)
    torch.manual_seed(7)
    ref_pos, ref_neg = Reference(64, 0.25)(labels)
    for p, q, rp, rq, lab in zip(pos, neg, ref_pos, ref_neg, labels, strict=True):
        assert torch.equal(p, rp) and torch.equal(q, rq)
        n_pos = min(16, int((lab >= 1).sum()))
        assert int(p.sum()) == n_pos and int(q.sum()) == min(64 - n_pos, int((lab == 0).sum()))
        assert bool((lab[p.bool()] >= 1).all()) and bool((lab[q.bool()] == 0).all())


def test_box_coder_matches_torchvision_and_round_trips():
    ref, _ = random_boxes(300, seed=3)
    tgt, _ = random_boxes(300, seed=4)
    for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        ours, theirs = ops.BoxCoder(w), TvBoxCoder(w)
        codes = ours.encode_single(tgt, ref)
        assert torch.allclose(codes, theirs.encode_single(tgt, ref), atol=1e-5)
        assert torch.allclose(ours.decode_single(codes, ref), tgt, atol=1e-3)
        wild = codes * 40  # exp() clamp: no inf
        assert torch.allclose(ours.decode_single(wild, ref), theirs.decode_single(wild, ref), rtol=1e-5, atol=1e-3)
        assert torch.isfinite(ours.decode_single(wild, ref)).all()


def test_ps_roi_align_has_gradients_for_training():
    maps = torch.rand(1, 2 * 49, 10, 10, requires_grad=True)
    rois = torch.tensor([[0.0, 8, 8, 60, 50]])
    ops.ps_roi_align(maps, rois, 7, 1 / 8, 2).sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0


def test_fold_batchnorm_keeps_outputs():
    torch.manual_seed(0)
    model = R2CNN(R2CNNConfig(gate_input_scale=4, gate_pool="top3"))
    # non-trivial batch-norm statistics and affine terms
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        f0, g0 = model.features(x), model.gate_forward(x)
        fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(model.features(x), f0, atol=1e-4)
        assert torch.allclose(model.gate_forward(x), g0, atol=1e-4)


def test_torchvision_is_imported_on_first_use_and_never_loaded_by_file(tmp_path):
    """Loading a model imports no torchvision (~1.6 s, ~155 MiB); the first detection imports it the documented
    way: geors never loads torchvision's compiled library file itself (torch.ops.load_library)."""
    code = (
        "import sys, numpy as np, torch\n"
        "calls, load = [], torch.ops.load_library\n"
        "def spy(path):\n"
        "    if 'geors' in sys._getframe(1).f_code.co_filename:\n"
        "        calls.append(path)\n"
        "    return load(path)\n"
        "torch.ops.load_library = spy\n"
        "from geors.detect import Detector\n"
        "d = Detector.load(None, device='cpu')\n"
        "before = 'torchvision' in sys.modules\n"
        "x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)\n"
        "probs, dets = d.gate_and_detect(x, gate_threshold=None, score_threshold=0.0)\n"
        "assert len(dets) == 1 and dets[0][0].shape[1] == 4\n"
        "t = d._to_tensor(x)\n"
        "assert t.is_contiguous(memory_format=torch.channels_last)\n"
        "print(before, 'torchvision' in sys.modules, calls)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False True []", out.stderr


def test_missing_torchvision_is_a_clear_error(monkeypatch):
    from geors.errors import DependencyNotFoundError

    monkeypatch.setitem(sys.modules, "torchvision.ops", None)  # import fails as if it were not installed
    boxes, scores = random_boxes(10)
    with pytest.raises(DependencyNotFoundError, match="pip install --force-reinstall torch torchvision"):
        ops.nms(boxes, scores, 0.5)


def test_training_losses_still_build_samplers():
    torch.manual_seed(0)
    model = R2CNN(R2CNNConfig())
    x = torch.rand(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 10, 40, 40]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.compute_losses(x, targets)
    assert np.isfinite(float(losses["total"].detach()))
    losses["total"].backward()


def test_gate_threshold_calibrated_on_the_training_network_passes_the_folded_one():
    """Calibration puts the threshold exactly on a tile's probability; inference must still pass that tile."""
    from geors.detect import GATE_TOLERANCE, Detector, gate_passes

    torch.manual_seed(1)
    model = R2CNN(R2CNNConfig(gate_input_scale=4, gate_pool="top3"))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = np.random.default_rng(0).random((4, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        probs_train = model.gate_forward(torch.from_numpy(x)).softmax(1)[:, 1].numpy()
    meta = {"classes": ["x"], "bands": 3, "tile_size": 128}
    det = Detector(fold_batchnorm(model), meta, torch.device("cpu"))
    for threshold in probs_train:  # each tile's own probability as the calibrated threshold
        probs, _ = det.gate_and_detect(x, gate_threshold=float(threshold), score_threshold=0.99)
        assert gate_passes(probs, float(threshold))[probs_train >= threshold].all()
    assert gate_passes(np.float32(0.5) - 1e-7, 0.5) and not gate_passes(0.5 - 10 * GATE_TOLERANCE, 0.5)
