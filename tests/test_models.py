import numpy as np
import pytest
import torch

from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.models.tinynet import GlobalAttention, TinyNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return R2CNN(R2CNNConfig(num_classes=2, anchor_scales=[8.0, 16.0, 32.0])).eval()


def test_tinynet_stage_shapes_640():
    net = TinyNet().eval()
    with torch.no_grad():
        st = net.forward_stages(torch.rand(1, 3, 640, 640))
    expect = {"conv1": (12, 640), "conv2": (18, 320), "conv3": (36, 160), "conv4": (48, 80), "conv5": (72, 40),
              "out": (48, 80)}
    for name, (ch, side) in expect.items():
        assert tuple(st[name].shape) == (1, ch, side, side), name
    assert [len(s) for s in (net.conv2, net.conv3, net.conv4, net.conv5)] == [2, 2, 3, 2]


def test_tinynet_zoom_in_adds_conv5_to_conv4():
    net = TinyNet().eval()
    with torch.no_grad():
        nn_ = torch.nn
        net.lateral.weight.zero_()
        net.lateral.bias.zero_()
        st = net.forward_stages(torch.rand(1, 3, 64, 64))
        assert torch.allclose(st["out"], st["conv4"])  # without the skip, out == conv4
        nn_.init.constant_(net.lateral.bias, 1.0)
        st = net.forward_stages(torch.rand(1, 3, 64, 64))
        assert torch.allclose(st["out"], st["conv4"] + 1.0)


def test_global_attention_pools_the_whole_map_on_odd_sizes():
    torch.manual_seed(0)
    att = GlobalAttention(8).eval()
    x = torch.randn(2, 8, 13, 7)
    with torch.no_grad():
        out = att(x)
        assert out.shape == x.shape
        # a map constant per channel pools to itself at every bin (1, 2, 4): fuse(x + 3 x)
        flat = x.mean((2, 3), keepdim=True).expand_as(x).contiguous()
        expected = att.fuse(4 * flat)
        assert expected.abs().sum() > 0 and torch.allclose(att(flat), expected, atol=1e-5)
        # global: one pixel in a corner changes the output in the opposite corner (a 1x1 conv alone would not)
        y = x.clone()
        y[:, :, 0, 0] += 5.0
        assert (att(y) - out)[:, :, -1, -1].abs().max() > 1e-3
        assert not torch.allclose(out, att.fuse(x), atol=1e-4)  # the pooled maps are added


def test_gate_logits_and_detections_shapes(model):
    x = torch.rand(3, 3, 128, 96)
    with torch.no_grad():
        gate, dets = model(x, score_threshold=0.0)
    assert gate.shape == (3, 2)
    assert len(dets) == 3
    for d in dets:
        # score threshold 0: the random network keeps boxes on every image (an empty result is a failure)
        assert len(d.boxes) > 0
        assert d.boxes.shape[1] == 4 and d.boxes.shape[0] == d.scores.shape[0] == d.labels.shape[0]
        assert d.boxes[:, [0, 1]].min() >= 0
        assert d.boxes[:, [0, 2]].max() <= 96 and d.boxes[:, [1, 3]].max() <= 128
        assert (d.boxes[:, 2] > d.boxes[:, 0]).all() and (d.boxes[:, 3] > d.boxes[:, 1]).all()
        assert set(d.labels.tolist()) <= {0, 1}
        assert ((d.scores >= 0) & (d.scores <= 1)).all()
        assert (d.scores[:-1] >= d.scores[1:]).all()  # sorted by score


def test_anchors_square_on_stride8_centres(model):
    a = model.anchors(2, 3, torch.device("cpu"))
    assert a.shape == (2 * 3 * 3, 4)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    assert torch.allclose(w, h)
    assert sorted(set(w.tolist())) == [8.0, 16.0, 32.0]
    centres = torch.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2], 1)
    assert set(map(tuple, centres.tolist())) == {(x, y) for x in (4.0, 12.0, 20.0) for y in (4.0, 12.0)}


def test_detector_loss_only_for_tiles_with_targets():
    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0])).train()
    x = torch.rand(2, 3, 64, 64)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = m.compute_losses(x, [empty, empty])
    assert losses["rpn"].item() == 0 and losses["roi_cls"].item() == 0
    assert torch.allclose(losses["total"], losses["gate"])
    full = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 22.0]]), "labels": torch.tensor([0])}
    losses = m.compute_losses(x, [full, empty])
    assert losses["rpn"].item() > 0 and losses["roi_cls"].item() > 0
    losses["total"].backward()
    assert m.rpn_cls.weight.grad is not None and m.gate_head[-1].weight.grad is not None


@pytest.mark.parametrize("gate_input_scale", [1, 4])
@pytest.mark.parametrize("roi_ohem", [0, 8])
@pytest.mark.parametrize("assigner", ["nwd_rka", "iou"])
def test_empty_negatives_train_the_detector_on_crops_without_targets(assigner, roi_ohem, gate_input_scale):
    """``empty_negatives``: a crop without targets gives RPN negatives and background RoIs, no box loss."""
    torch.manual_seed(0)
    cfg = dict(anchor_scales=[8.0, 16.0], assigner=assigner, roi_ohem=roi_ohem, gate_input_scale=gate_input_scale)
    m = R2CNN(R2CNNConfig(**cfg, empty_negatives=True)).train()
    x = torch.rand(2, 3, 64, 64)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = m.compute_losses(x, [empty, empty])
    assert losses["rpn"].item() > 0 and losses["roi_cls"].item() > 0
    assert losses["roi_box"].item() == 0
    losses["total"].backward()
    assert m.rpn_cls.weight.grad.abs().sum() > 0 and m.ps_cls.weight.grad.abs().sum() > 0
    assert m.rpn_reg.weight.grad is None or m.rpn_reg.weight.grad.abs().sum() == 0  # nothing to regress to
    # in a mixed batch the empty crop adds its negatives to the crop with targets
    full = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 22.0]]), "labels": torch.tensor([0])}
    paper = R2CNN(R2CNNConfig(**cfg)).train()
    paper.load_state_dict(m.state_dict())
    torch.manual_seed(1)
    with_neg = m.compute_losses(x, [full, empty])
    torch.manual_seed(1)
    without = paper.compute_losses(x, [full, empty])
    assert with_neg["gate"].item() == pytest.approx(without["gate"].item())
    assert with_neg["rpn"].item() != pytest.approx(without["rpn"].item())
    assert R2CNNConfig().empty_negatives is False  # the paper by default: older model files train as before


@pytest.mark.parametrize("assigner", ["nwd_rka", "iou"])
def test_both_assigners_train(assigner):
    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0], assigner=assigner)).train()
    t = {"boxes": torch.tensor([[10.0, 10.0, 16.0, 16.0]]), "labels": torch.tensor([0])}
    losses = m.compute_losses(torch.rand(1, 3, 64, 64), [t])
    assert torch.isfinite(losses["total"]) and losses["rpn"].item() > 0


def test_unknown_assigner_rejected():
    with pytest.raises(ValueError, match="assigner"):
        R2CNN(R2CNNConfig(assigner="atss"))


# ---------------------------------------------------------------- cheap gate (gate_input_scale)
def _detector(model, tile=96):
    from geors.detect import Detector

    meta = {"classes": ["a"], "bands": 3, "tile_size": tile, "overlap": 0, "name": "t"}
    return Detector(model, meta, torch.device("cpu"))


class _ShapeLog:
    """Forward hook recording the input shapes the backbone sees."""

    def __init__(self, module):
        self.shapes = []
        self.handle = module.register_forward_hook(lambda m, inp, out: self.shapes.append(tuple(inp[0].shape)))


def test_gate_at_scale_4_reads_average_pooled_tiles():
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0], gate_input_scale=4)).eval()
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        expect = m.gate_logits(m.features(F.avg_pool2d(x, 4)))
        full_res = m.gate_logits(m.features(x))
        assert torch.allclose(m.gate_forward(x), expect, atol=1e-6)
        assert not torch.allclose(m.gate_forward(x), full_res, atol=1e-4)  # really a different input
        gate, _ = m(x)
        assert torch.allclose(gate, expect, atol=1e-6)
    probs = _detector(m).gate(x.numpy())
    assert np.allclose(probs, expect.softmax(1)[:, 1].numpy(), atol=1e-6)
    # sizes that are not a multiple of the scale: the partial last cell is the mean of the pixels present
    y = torch.rand(1, 3, 10, 9)
    pooled = m.gate_input(y)
    assert pooled.shape == (1, 3, 3, 3)
    assert torch.allclose(pooled[0, :, 2, 2], y[0, :, 8:, 8:].mean(dim=(1, 2)))


def test_gate_and_detect_runs_full_resolution_backbone_only_for_passing_tiles():
    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0], gate_input_scale=4)).eval()
    with torch.no_grad():
        m.gate_head[-1].weight.mul_(50.0)  # spread the random gate's probabilities
    x = np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32)
    x[0] = 0.0
    x[1] = 1.0
    det = _detector(m, 64)
    p = det.gate(x)
    assert len(set(np.round(p, 6))) == 4
    thr = float(np.sort(p)[1])  # three tiles pass
    passing = np.flatnonzero(p >= thr)
    log = _ShapeLog(m.backbone)
    probs, out = det.gate_and_detect(x, gate_threshold=thr, score_threshold=0.0)
    log.handle.remove()
    assert np.allclose(probs, p, atol=1e-6)
    assert log.shapes == [(4, 3, 16, 16), (len(passing), 3, 64, 64)]
    with torch.no_grad():
        for i in range(4):
            boxes = out[i][0]
            if i not in passing:
                assert boxes.shape == (0, 4)
                continue
            ref = m.detect_from_features(m.features(torch.from_numpy(x[i:i + 1])), (64, 64), 0.0)[0]
            assert boxes.shape[0] == ref.boxes.shape[0] > 0
            a, b = np.round(boxes, 2), np.round(ref.boxes.numpy(), 2)  # near-tied scores: compare as sets
            assert np.allclose(a[np.lexsort(a.T)], b[np.lexsort(b.T)], atol=0.02)
    # no gating: every tile goes through the full-resolution backbone, probabilities still reported
    log = _ShapeLog(m.backbone)
    probs, out = det.gate_and_detect(x, gate_threshold=None, score_threshold=0.0)
    log.handle.remove()
    assert log.shapes == [(4, 3, 16, 16), (4, 3, 64, 64)] and np.allclose(probs, p, atol=1e-6)
    # nothing passes: no full-resolution pass at all
    log = _ShapeLog(m.backbone)
    det.gate_and_detect(x, gate_threshold=1.01)
    log.handle.remove()
    assert log.shapes == [(4, 3, 16, 16)]


def test_old_model_file_without_gate_input_scale_loads_as_paper_gate(tmp_path):
    from geors.detect import Detector
    from geors.models.registry import load_model, save_model

    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0])).eval()
    arch = m.config.to_dict()
    del arch["gate_input_scale"]  # as written before the field existed
    path = save_model(m, {"arch_args": arch, "classes": ["a"], "bands": 3, "tile_size": 64}, tmp_path / "old.safetensors")
    loaded, meta = load_model(path, torch.device("cpu"))
    assert "gate_input_scale" not in meta["arch_args"] and loaded.config.gate_input_scale == 1
    det = Detector.load(path, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expect = m.gate_logits(m.features(x)).softmax(1)[:, 1].numpy()
    assert np.allclose(det.gate(x.numpy()), expect, atol=1e-6)
    log = _ShapeLog(det.model.backbone)
    probs, _ = det.gate_and_detect(x.numpy(), gate_threshold=0.0)
    log.handle.remove()
    assert log.shapes == [(2, 3, 64, 64)]  # one shared full-resolution pass, as in the paper
    assert np.allclose(probs, expect, atol=1e-6)


def test_cheap_gate_losses_gate_on_pooled_detector_on_full_resolution():
    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0], gate_input_scale=4)).train()
    x = torch.rand(3, 3, 64, 64)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    full = {"boxes": torch.tensor([[10.0, 10.0, 20.0, 22.0]]), "labels": torch.tensor([0])}
    log = _ShapeLog(m.backbone)
    losses = m.compute_losses(x, [empty, full, empty])
    log.handle.remove()
    assert log.shapes == [(3, 3, 16, 16), (1, 3, 64, 64)]
    assert losses["rpn"].item() > 0 and torch.isfinite(losses["total"])
    log = _ShapeLog(m.backbone)
    losses = m.compute_losses(x, [empty, empty, empty])
    log.handle.remove()
    assert log.shapes == [(3, 3, 16, 16)] and torch.allclose(losses["total"], losses["gate"])


def test_gate_input_scale_must_be_positive():
    with pytest.raises(ValueError, match="gate_input_scale"):
        R2CNN(R2CNNConfig(gate_input_scale=0))


def test_gate_topk_pooling_is_the_mean_of_the_k_highest_location_margins():
    import torch

    from geors.models.r2cnn import R2CNN, R2CNNConfig

    torch.manual_seed(0)
    avg = R2CNN(R2CNNConfig(gate_input_scale=4)).eval()
    top = R2CNN(R2CNNConfig(gate_input_scale=4, gate_pool="top3")).eval()
    top.load_state_dict(avg.state_dict())
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        f = avg.features(avg.gate_input(x))
        h = avg.gate_head
        per_loc = h[3](h[1](h[0](f)))
        margin = (per_loc[:, 1] - per_loc[:, 0]).flatten(1)
        expect = margin.topk(3, dim=1).values.mean(1)
        got = top.gate_forward(x)
        # average pooling then the 1x1 conv equals the mean of per-location logits
        assert torch.allclose(avg.gate_forward(x), per_loc.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(got[:, 1], expect, atol=1e-5) and torch.all(got[:, 0] == 0)
    # one bright location is enough for top-K, while the average dilutes it
    assert torch.all(expect >= margin.mean(1))
    import pytest
    with pytest.raises(ValueError, match="gate_pool"):
        R2CNN(R2CNNConfig(gate_pool="median"))


def test_trim_padding_cuts_only_all_zero_bottom_right():
    from geors.detect import trim_padding

    x = torch.rand(2, 3, 64, 64) + 0.01
    assert trim_padding(x) is x
    pad = torch.zeros(2, 3, 128, 128)
    pad[:, :, :40, :50] = x[:, :, :40, :50]
    assert trim_padding(pad).shape == (2, 3, 40, 50)
    pad[1, 2, 70, 3] = 0.5  # one non-zero pixel of one band of one tile keeps its row
    assert trim_padding(pad).shape == (2, 3, 71, 50)
    tiny = torch.zeros(1, 3, 128, 128)
    tiny[..., :5, :5] = 1
    assert trim_padding(tiny).shape == (1, 3, 32, 32)  # never below the minimum side
    assert trim_padding(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_scene_smaller_than_a_tile_detects_as_the_unpadded_image():
    """Zero padding to the tile size (a scene smaller than a tile) must not change detections or the gate."""
    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0], gate_input_scale=4, gate_pool="top3")).eval()
    det = _detector(m, tile=128)
    img = np.random.default_rng(0).uniform(0.05, 1, (1, 3, 72, 88)).astype(np.float32)
    padded = np.zeros((1, 3, 128, 128), np.float32)
    padded[..., :72, :88] = img
    p1, d1 = det.gate_and_detect(img, gate_threshold=None, score_threshold=0.0)
    p2, d2 = det.gate_and_detect(padded, gate_threshold=None, score_threshold=0.0)
    assert np.allclose(p1, p2, atol=1e-6) and np.allclose(det.gate(padded), p1, atol=1e-6)
    assert len(d1[0][0]) == len(d2[0][0]) > 0 and np.allclose(d1[0][0], d2[0][0], atol=1e-4)


def test_inference_defaults_do_not_cap_proposals_at_300():
    cfg = R2CNNConfig()
    assert cfg.post_nms_test >= 1000 and cfg.max_detections >= cfg.post_nms_test and cfg.pre_nms_test >= 6000


def test_a_tiles_result_does_not_depend_on_its_batch_mates():
    """Issue 26.5: padding was trimmed per batch, so a tile with zero bottom rows got another gate
    probability and other boxes when batched with a full tile (failed before: the batch was not trimmed)."""
    torch.manual_seed(0)
    m = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0], gate_input_scale=4, gate_pool="top3")).eval()
    det = _detector(m, tile=128)
    rng = np.random.default_rng(1)
    edge = np.zeros((1, 3, 128, 128), np.float32)
    edge[..., :72, :] = rng.uniform(0.05, 1, (1, 3, 72, 128))  # the scene's last rows, zero below
    full = rng.uniform(0.05, 1, (1, 3, 128, 128)).astype(np.float32)
    p_alone, d_alone = det.gate_and_detect(edge, gate_threshold=None, score_threshold=0.0)
    p_batch, d_batch = det.gate_and_detect(np.concatenate([full, edge, full]), gate_threshold=None,
                                           score_threshold=0.0)
    assert abs(float(p_batch[1]) - float(p_alone[0])) < 1e-6
    assert np.allclose(det.gate(np.concatenate([edge, full])), [p_alone[0], p_batch[0]], atol=1e-6)
    assert len(d_alone[0][0]) == len(d_batch[1][0]) > 0
    assert np.allclose(d_alone[0][0], d_batch[1][0], atol=1e-4)
    assert np.allclose(d_alone[0][1], d_batch[1][1], atol=1e-6)
    # the full tiles are what they are alone
    p_full, d_full = det.gate_and_detect(full, gate_threshold=None, score_threshold=0.0)
    assert abs(float(p_batch[0]) - float(p_full[0])) < 1e-6 and np.allclose(d_full[0][0], d_batch[2][0], atol=1e-4)


def test_padding_groups_trim_each_tile_by_its_own_padding():
    from geors.detect import padding_groups

    x = torch.rand(3, 3, 64, 64) + 0.01
    x[1, :, 40:, :] = 0
    groups = padding_groups(x)
    assert [(idx, tuple(g.shape)) for idx, g in groups] == [([0, 2], (2, 3, 64, 64)), ([1], (1, 3, 40, 64))]
