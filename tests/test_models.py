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


def test_global_attention_keeps_shape_on_odd_sizes():
    att = GlobalAttention(8).eval()
    x = torch.rand(2, 8, 13, 7)
    assert att(x).shape == x.shape


def test_gate_logits_and_detections_shapes(model):
    x = torch.rand(3, 3, 128, 96)
    with torch.no_grad():
        gate, dets = model(x, score_threshold=0.0)
    assert gate.shape == (3, 2)
    assert len(dets) == 3
    for d in dets:
        assert d.boxes.shape[1] == 4 and d.boxes.shape[0] == d.scores.shape[0] == d.labels.shape[0]
        if len(d.boxes):
            assert d.boxes[:, [0, 2]].min() >= 0 and d.boxes[:, [0, 2]].max() <= 96
            assert d.boxes[:, [1, 3]].max() <= 128
            assert set(d.labels.tolist()) <= {0, 1}


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
