import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from torchvision.ops import box_iou

from geors.detect import Detector
from geors.errors import LabelError
from geors.train.anchors import box_sizes, kmeans_anchor_scales
from geors.train.augment import hflip, random_dihedral, rot90, vflip
from geors.train.detector import TrainConfig, TrainTile, sample_batch, train_detector


def squares_tile(rng, n, side=96):
    """Dark noise with ``n`` bright, non-touching squares of 10-15 px; boxes in pixels."""
    img = rng.uniform(0, 0.25, (3, side, side)).astype(np.float32)
    boxes = []
    while len(boxes) < n:
        s = int(rng.integers(10, 16))
        x, y = (int(v) for v in rng.integers(4, side - s - 4, 2))
        if any(x < b[2] + 4 and x + s + 4 > b[0] and y < b[3] + 4 and y + s + 4 > b[1] for b in boxes):
            continue
        img[:, y:y + s, x:x + s] = 0.9
        boxes.append([x, y, x + s, y + s])
    return TrainTile(img, np.array(boxes, np.float32).reshape(-1, 4), np.zeros(n, np.int64))


def _mask_box(img):
    ys, xs = np.nonzero(img[0] > 0.5)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("op", [hflip, vflip, lambda i, b: rot90(i, b, 1), lambda i, b: rot90(i, b, 3)])
def test_augment_moves_boxes_with_pixels(op):
    img = np.zeros((1, 6, 10), np.float32)
    img[0, 1:3, 2:5] = 1
    out, boxes = op(img, np.array([[2.0, 1.0, 5.0, 3.0]]))
    assert boxes[0].tolist() == _mask_box(out)


def test_random_dihedral_keeps_box_sizes():
    rng = np.random.default_rng(0)
    t = squares_tile(rng, 3, side=64)
    for _ in range(8):
        img, boxes = random_dihedral(t.image, t.boxes, rng)
        assert img.shape == t.image.shape and img.flags["C_CONTIGUOUS"]
        assert sorted(box_sizes(boxes).round(3)) == sorted(box_sizes(t.boxes).round(3))
        for b in boxes.astype(int):
            assert img[0, b[1]:b[3], b[0]:b[2]].min() > 0.5  # box still covers a bright square


def test_kmeans_scales_find_size_clusters():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.normal(8, 0.5, 100), rng.normal(32, 2, 100)])
    boxes = np.stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes], 1)
    scales = kmeans_anchor_scales(boxes, k=2)
    assert scales[0] == pytest.approx(8, abs=0.5) and scales[1] == pytest.approx(32, abs=2)
    assert kmeans_anchor_scales(boxes, k=6) == kmeans_anchor_scales(boxes, k=6)  # deterministic
    assert len(kmeans_anchor_scales(np.array([[0, 0, 10, 10]] * 5), k=6)) == 1
    with pytest.raises(ValueError):
        kmeans_anchor_scales(np.zeros((0, 4)))


def test_sample_batch_balances_positive_and_empty_crops():
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 0)]
    imgs, boxes, cids = sample_batch(tiles, 40, 48, np.random.default_rng(1), pos_fraction=0.5)
    assert imgs.shape == (40, 3, 48, 48)
    n_pos = sum(len(b) > 0 for b in boxes)
    assert 10 <= n_pos <= 30
    for img, b in zip(imgs, boxes, strict=True):
        assert np.all(b >= 0) and np.all(b <= 48)
        if len(b) == 0:
            continue
        for x0, y0, x1, y1 in b.astype(int):
            assert img[0, y0:y1, x0:x1].mean() > 0.5  # labelled pixels are the bright squares


def test_training_reduces_loss_and_finds_squares():
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 3), squares_tile(rng, 0)]
    cfg = TrainConfig(epochs=1, steps_per_epoch=300, batch_size=2, crop_size=64, device="cpu", lr=5e-3,
                      warmup_steps=5, gate_input_scale=1, arch={"rpn_batch": 64, "roi_batch": 32, "pre_nms_train": 300,
                                            "post_nms_train": 64, "post_nms_test": 50})
    model, meta = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96})
    assert meta["training"]["final_loss"] < 0.8 * meta["training"]["initial_loss"]
    assert meta["classes"] == ["square"] and meta["tile_size"] == 96 and len(meta["anchor_scales"]) <= 6
    det = Detector(model, meta, torch.device("cpu"))
    p = det.gate(np.stack([tiles[0].image, tiles[2].image]))
    assert p[0] > 0.5 > p[1]
    boxes, scores, _ = det.detect(tiles[0].image[None], score_threshold=0.01)[0]
    iou = box_iou(torch.from_numpy(tiles[0].boxes), torch.from_numpy(boxes[:3]))
    assert int((iou.max(dim=1).values >= 0.5).sum()) >= 2


def test_no_labels_is_label_error():
    t = TrainTile(np.zeros((3, 32, 32), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(LabelError):
        train_detector([t], ["x"], TrainConfig(epochs=1, steps_per_epoch=1, device="cpu"))


def _write_voc(path, boxes):
    root = ET.Element("annotation")
    for b in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "square"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b, strict=True):
            ET.SubElement(bb, k).text = str(int(v))
    ET.ElementTree(root).write(path)


def test_cli_train_detector_writes_loadable_model(tmp_path):
    from geors.cli.main import main

    t = squares_tile(np.random.default_rng(0), 3, side=160)
    scene = tmp_path / "sq.tif"
    data = (t.image * 255).astype(np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", width=160, height=160, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as ds:
        ds.write(data)
    labels = tmp_path / "sq.xml"
    _write_voc(labels, t.boxes)
    out = tmp_path / "m.safetensors"
    args = ["train", "detector", "--scene", str(scene), "--labels", str(labels), "--epochs", "1",
            "--steps-per-epoch", "2", "--crop", "64", "--tile", "128", "--overlap", "32", "--device", "cpu",
            "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["classes"] == ["square"]
    det = Detector.load(out, device="cpu")
    assert det.tile_size == 128 and det.overlap == 32 and det.meta["gsd_m"] == pytest.approx(0.5)
    # bad input: empty label file -> exit 2 with a message
    empty = tmp_path / "empty.xml"
    _write_voc(empty, [])
    r = CliRunner().invoke(main, args[:5] + [str(empty)] + args[6:])
    assert r.exit_code == 2 and "Error" in r.output


def test_sample_batch_falls_back_to_empty_images_when_canopy_is_dense():
    rng = np.random.default_rng(0)
    dense = squares_tile(rng, 0, side=64)
    dense.boxes = np.array([[x, y, x + 16, y + 16] for x in range(0, 64, 16) for y in range(0, 64, 16)], np.float32)
    dense.class_ids = np.zeros(len(dense.boxes), np.int64)
    empty = TrainTile(np.full((3, 80, 80), 0.3, np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    _, boxes, _ = sample_batch([dense, empty], 200, 48, np.random.default_rng(1), pos_fraction=0.5)
    n_empty = sum(len(b) == 0 for b in boxes)
    assert 80 <= n_empty <= 120  # about half: no box-free crop exists in the dense image
    _, boxes, _ = sample_batch([dense], 50, 48, np.random.default_rng(1), pos_fraction=0.5)
    assert all(len(b) for b in boxes)  # no empty source at all: every crop is positive


def test_cheap_gate_training_separates_empty_from_object_crops():
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 4), squares_tile(rng, 4), squares_tile(rng, 0), squares_tile(rng, 0)]
    cfg = TrainConfig(epochs=1, steps_per_epoch=80, batch_size=4, crop_size=64, device="cpu", lr=5e-3,
                      warmup_steps=5, gate_input_scale=4, gate_recall=1.0,
                      arch={"rpn_batch": 64, "roi_batch": 32, "pre_nms_train": 300, "post_nms_train": 64,
                            "post_nms_test": 50})
    model, meta = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96, "overlap": 0})
    assert model.config.gate_input_scale == 4
    assert meta["arch_args"]["gate_input_scale"] == 4 and meta["training"]["gate_input_scale"] == 4
    calib = meta["training"]["gate_calibration"]
    assert calib["n_pos_tiles"] == 2 and calib["n_empty_tiles"] == 2 and calib["pos_kept"] == 1.0
    assert 0 < meta["gate_threshold"] <= 0.5
    det = Detector(model, meta, torch.device("cpu"))
    fresh = np.random.default_rng(5)
    pos = det.gate(np.stack([squares_tile(fresh, 2).image for _ in range(8)]))
    neg = det.gate(np.stack([squares_tile(fresh, 0).image for _ in range(8)]))
    assert pos.min() > neg.max() and pos.mean() - neg.mean() > 0.5, (pos, neg)


def test_random_contrast_lowers_contrast_within_range():
    from geors.train.augment import random_contrast

    img = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    assert random_contrast(img, np.random.default_rng(1), 0.0) is img
    out = random_contrast(img, np.random.default_rng(1), 0.6)
    assert out.shape == img.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert np.all(out.reshape(3, -1).std(axis=1) < img.reshape(3, -1).std(axis=1))
    # away from the clip bounds the change is a per-band affine map with one shared factor < 1
    c = np.corrcoef(img[0].ravel(), out[0].ravel())[0, 1]
    assert c > 0.95
