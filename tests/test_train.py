import hashlib
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from PIL import Image
from torchvision.ops import box_iou

from geors.detect import Detector
from geors.errors import LabelError
from geors.train.anchors import box_sizes, kmeans_anchor_scales
from geors.train.augment import hflip, random_dihedral, rot90, vflip
from geors.train.detector import (
    GATE_TARGET_RECALL,
    GateCalibrationError,
    TrainConfig,
    TrainTile,
    calibrate_gate_threshold,
    sample_batch,
    split_validation,
    train_detector,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL_ARCH = {"rpn_batch": 64, "roi_batch": 32, "pre_nms_train": 300, "post_nms_train": 64, "post_nms_test": 50}


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


@pytest.mark.slow
def test_training_reduces_loss_and_finds_squares():
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 3), squares_tile(rng, 0)]
    # A fixed schedule without a time budget (max_seconds=None), on the module's one torch thread: the run
    # reads no clock, so its weights are the same on a loaded machine (issue 26: with the default 10-minute
    # budget the learning rate followed the larger of step and time fraction, and this run failed 1 in 3 on
    # a loaded machine). Measured at one thread, 300 steps: training seed 0 finds 1 of 3 squares (gate
    # 1.00 vs 0.93), seeds 1-3 find 3 of 3 (gate gap 0.64-0.86); seed 2 is used.
    cfg = TrainConfig(max_seconds=None, steps=300, seed=2, batch_size=2, crop_size=64, device="cpu", lr=5e-3,
                      warmup_steps=5, gate_input_scale=1, val_fraction=0, arch=SMALL_ARCH)
    model, meta = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96})
    assert meta["training"]["final_loss"] < 0.8 * meta["training"]["initial_loss"]
    assert meta["classes"] == ["square"] and meta["tile_size"] == 96 and len(meta["anchor_scales"]) <= 6
    det = Detector(model, meta, torch.device("cpu"))
    p = det.gate(np.stack([tiles[0].image, tiles[2].image]))
    # Ranked, not a fixed 0.5: the absolute gate scores of this short toy run vary with the seed and the CPU
    # (seeds 0-9 on one machine: 0.92-1.00 vs 0.01-0.57, smallest margin 0.43); geors calibrates the threshold.
    assert p[0] > p[1] + 0.3, p
    boxes, scores, _ = det.detect(tiles[0].image[None], score_threshold=0.01)[0]
    iou = box_iou(torch.from_numpy(tiles[0].boxes), torch.from_numpy(boxes[:3]))
    assert int((iou.max(dim=1).values >= 0.5).sum()) >= 2
    # the score threshold rule: highest F1 over the candidates, ties to the lower threshold
    from geors.evaluate.detections import evaluate_detections
    from geors.train.calibrate import calibrate_score_threshold, validation_tables

    sc = calibrate_score_threshold(model, tiles)
    assert sc["status"] == "calibrated" and sc["n_truth"] == 6
    f1s = [row[3] for row in sc["curve"]]
    assert sc["best_f1_threshold"] == sc["curve"][f1s.index(max(f1s))][0]
    assert sc["f1"] >= max(f1s) - sc["f1_tolerance"] - 1e-4  # within one standard error of the best (6 objects)
    o = evaluate_detections(*validation_tables(model, tiles), iou_thresholds=(0.5,),
                            score_threshold=sc["score_threshold"])["overall"]
    assert (o["recall"], o["precision"]) == pytest.approx((sc["recall"], sc["precision"]), abs=1e-4)
    none = calibrate_score_threshold(model, [tiles[2]])  # no objects to calibrate on
    assert none["status"] == "default" and none["score_threshold"] is None
    assert Detector(model, {**meta, "score_threshold": None}, torch.device("cpu")).score_threshold == 0.3


@pytest.mark.parametrize("budget", [None, 600.0])
def test_a_fixed_step_run_without_budget_reads_no_clock(monkeypatch, budget):
    """Why the tests that check what a model learnt pass ``max_seconds=None`` (issue 26: the slow squares test
    failed 1 run in 3 on a loaded machine). Without a budget a fixed-step run trains the same weights however
    slow the machine; under a budget (the default 10 minutes) the learning rate follows the larger of the step
    and the time fraction and the budget may cut the run, so a slow machine trains another model."""
    import geors.train.detector as td

    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 0)]
    cfg = TrainConfig(max_seconds=budget, steps=6, batch_size=2, crop_size=48, device="cpu", warmup_steps=1,
                      val_fraction=0, arch=SMALL_ARCH)
    m0, _ = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96})
    now = [0.0]

    def slow_clock():  # a machine so loaded that 20 s pass between two looks at the clock
        now[0] += 20.0
        return now[0]

    monkeypatch.setattr(td, "_clock", slow_clock)
    m1, _ = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96})
    same = all(torch.equal(v, m1.state_dict()[k]) for k, v in m0.state_dict().items())
    assert same is (budget is None)


def test_no_labels_is_label_error():
    t = TrainTile(np.zeros((3, 32, 32), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(LabelError):
        train_detector([t], ["x"], TrainConfig(max_seconds=None, epochs=1, steps_per_epoch=1, device="cpu"))


def _write_voc(path, boxes):
    root = ET.Element("annotation")
    for b in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = "square"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b, strict=True):
            ET.SubElement(bb, k).text = str(int(v))
    ET.ElementTree(root).write(path)


def test_cli_train_gate_has_the_same_options_as_train_detector():
    """`geors train gate` had no options at all (the second command built from one decorated function)."""
    from geors.cli.train import train_group

    def names(cmd):
        return {o for p in train_group.commands[cmd].params for o in p.opts}

    assert "--scene" in names("gate") and "--train-only" in names("gate")
    assert names("gate") == names("detector")


def test_cli_train_detector_takes_the_default_models_augmentation_recipe(tmp_path):
    """The default model's recipe (scale + photometric jitter, weight average) is reachable from `geors train`."""
    from geors.cli.train import train_group as main

    t = squares_tile(np.random.default_rng(0), 12, side=160)
    scene = tmp_path / "sq.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=160, height=160, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as ds:
        ds.write((t.image * 255).astype(np.uint8))
    labels = tmp_path / "sq.xml"
    _write_voc(labels, t.boxes)
    out = tmp_path / "m.safetensors"
    args = ["detector", "--scene", str(scene), "--labels", str(labels), "--max-minutes", "0", "--epochs", "1",
            "--steps-per-epoch", "2",
            "--crop", "64", "--tile", "128", "--overlap", "32", "--device", "cpu", "-o", str(out)]
    r = CliRunner().invoke(main, args + ["--scales", "0.75,1,1.33", "--color-jitter", "0.2", "--contrast-jitter",
                                         "0.3", "--saturation-jitter", "0.1", "--ema", "0.99"])
    assert r.exit_code == 0, r.output
    cfg = Detector.load(out, device="cpu").meta["training"]["config"]
    assert cfg["scales"] == [0.75, 1.0, 1.33] and cfg["color_jitter"] == 0.2 and cfg["contrast_jitter"] == 0.3
    assert cfg["saturation_jitter"] == 0.1 and cfg["ema_decay"] == 0.99
    r = CliRunner().invoke(main, args + ["--scales", "0,1"])
    assert r.exit_code == 2 and "--scales" in r.output


def test_cli_train_detector_writes_loadable_model(tmp_path):
    from geors.cli.train import train_group as main

    t = squares_tile(np.random.default_rng(0), 12, side=160)
    scene = tmp_path / "sq.tif"
    data = (t.image * 255).astype(np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", width=160, height=160, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as ds:
        ds.write(data)
    labels = tmp_path / "sq.xml"
    _write_voc(labels, t.boxes)
    out = tmp_path / "m.safetensors"
    args = ["detector", "--scene", str(scene), "--labels", str(labels), "--max-minutes", "0", "--epochs", "1",
            "--steps-per-epoch", "2", "--crop", "64", "--tile", "128", "--overlap", "32", "--device", "cpu",
            "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["classes"] == ["square"]
    # the summary says which validation AP50 the kept weights scored (to choose between runs by it)
    best = max((v["val_AP50"] for v in summary["validation"]), default=None)
    assert summary["best_val_AP50"] == best
    det = Detector.load(out, device="cpu")
    assert det.tile_size == 128 and det.overlap == 32 and det.meta["gsd_m"] == pytest.approx(0.5)
    assert det.name == "m"  # --name defaults to the file's stem
    # an image without objects (--empty-scene) adds all its tiles as empty examples; fine-tune from the model
    blank = tmp_path / "blank.tif"
    with rasterio.open(blank, "w", driver="GTiff", width=200, height=200, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(0.5, 0, 600000, 0, -0.5, 4000000)) as ds:
        ds.write(np.random.default_rng(1).integers(0, 60, (3, 200, 200), dtype=np.uint8))
    r = CliRunner().invoke(main, args[:-2] + ["--empty-scene", str(blank), "--init-from", str(out), "-o",
                                              str(tmp_path / "m2.safetensors")])
    assert r.exit_code == 0, r.output
    sources = Detector.load(tmp_path / "m2.safetensors", device="cpu").meta["training"]["sources"]
    assert sources[-1]["n_empty_tiles_used"] == 4 and sources[-1]["n_boxes"] == 0
    # an empty scene has no label file (it used to be recorded as its own labels); label files carry their hash
    assert sources[-1]["labels"] is None and sources[-1]["labels_sha256"] is None
    assert sources[-1]["scene"].endswith("blank.tif") and sources[0]["labels"].endswith("sq.xml")
    assert sources[0]["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    # bad input: empty label file -> exit 2 with a message
    empty = tmp_path / "empty.xml"
    _write_voc(empty, [])
    r = CliRunner().invoke(main, args[:4] + [str(empty)] + args[5:])
    assert r.exit_code == 2 and "Error" in r.output


def test_cli_train_renames_classes_and_records_gsd_of_ungeoreferenced_images(tmp_path):
    """Labels from other tools name classes their way (DeepForest's VOC files say "Tree"): --rename-class maps
    them; --gsd records the pixel size when the training images carry no georeferencing."""
    from geors.cli.train import train_group as main

    t = squares_tile(np.random.default_rng(0), 12, side=160)
    scene = tmp_path / "sq.png"
    Image.fromarray((t.image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(scene)
    labels = tmp_path / "sq.xml"
    _write_voc(labels, t.boxes)
    args = ["detector", "--scene", str(scene), "--labels", str(labels), "--allow-ungeoreferenced",
            "--max-minutes", "0", "--epochs", "1",
            "--steps-per-epoch", "1", "--crop", "64", "--tile", "128", "--overlap", "32", "--device", "cpu"]
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(main, args + ["--rename-class", "square=box", "--gsd", "0.1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    det = Detector.load(out, device="cpu")
    assert det.classes == ["box"] and det.meta["gsd_m"] == pytest.approx(0.1)
    for bad in (["--rename-class", "circle=box"], ["--rename-class", "square"]):
        r = CliRunner().invoke(main, args + bad + ["-o", str(tmp_path / "bad.safetensors")])
        assert r.exit_code == 2 and ("circle" in r.output or "OLD=NEW" in r.output), r.output
        assert not (tmp_path / "bad.safetensors").exists()


def test_cli_train_empty_negatives_is_recorded_and_kept_when_fine_tuning(tmp_path):
    """Crops without objects train the detector too with --empty-negatives (off by default for a new model: the
    paper); the model file records it, and a fine-tune keeps the starting model's setting unless given."""
    from geors.cli.train import train_group as main

    t = squares_tile(np.random.default_rng(0), 12, side=160)
    scene = tmp_path / "sq.png"
    Image.fromarray((t.image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(scene)
    labels = tmp_path / "sq.xml"
    _write_voc(labels, t.boxes)
    empty = tmp_path / "empty.png"
    Image.fromarray(np.full((160, 160, 3), 40, np.uint8)).save(empty)
    args = ["detector", "--scene", str(scene), "--labels", str(labels), "--empty-scene", str(empty),
            "--allow-ungeoreferenced", "--max-minutes", "0", "--epochs", "1", "--steps-per-epoch", "2",
            "--crop", "64", "--tile", "128",
            "--overlap", "32", "--device", "cpu"]

    def arch(path):
        return Detector.load(path, device="cpu").meta["arch_args"]["empty_negatives"]

    r = CliRunner().invoke(main, args + ["-o", str(tmp_path / "paper.safetensors")])
    assert r.exit_code == 0, r.output
    assert arch(tmp_path / "paper.safetensors") is False  # off by default for a new model
    r = CliRunner().invoke(main, args + ["--empty-negatives", "-o", str(tmp_path / "en.safetensors")])
    assert r.exit_code == 0, r.output
    assert arch(tmp_path / "en.safetensors") is True
    r = CliRunner().invoke(main, args + ["--init-from", str(tmp_path / "paper.safetensors"),
                                         "-o", str(tmp_path / "kept.safetensors")])
    assert r.exit_code == 0, r.output
    assert arch(tmp_path / "kept.safetensors") is False  # fine-tuning an older (paper) model keeps its setting
    r = CliRunner().invoke(main, args + ["--init-from", str(tmp_path / "en.safetensors"),
                                         "-o", str(tmp_path / "ft.safetensors")])
    assert r.exit_code == 0, r.output
    assert arch(tmp_path / "ft.safetensors") is True
    r = CliRunner().invoke(main, args + ["--init-from", str(tmp_path / "en.safetensors"), "--no-empty-negatives",
                                         "-o", str(tmp_path / "off.safetensors")])
    assert r.exit_code == 0, r.output
    assert arch(tmp_path / "off.safetensors") is False


@pytest.mark.parametrize("start, expected", [(0.0, [True] * 6), (0.5, [False] * 3 + [True] * 3),
                                             (0.95, [False] * 5 + [True])])  # rounds to 6 of 6: the last step still
def test_empty_negatives_warm_up_trains_the_first_share_as_the_paper(monkeypatch, start, expected):
    """``empty_negatives_from``: the first share of the steps leaves empty crops out of the detector loss, the rest
    puts them in; the model file records the configured setting (on), not the state of one step."""
    from geors.models.r2cnn import R2CNN

    seen = []
    real = R2CNN.compute_losses

    def spy(self, images, targets):
        seen.append(self.config.empty_negatives)
        return real(self, images, targets)

    monkeypatch.setattr(R2CNN, "compute_losses", spy)
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 0)]
    cfg = TrainConfig(max_seconds=None, epochs=2, steps_per_epoch=3, batch_size=2, crop_size=64, device="cpu",
                      warmup_steps=1,
                      patience=None, val_fraction=0, arch=SMALL_ARCH, empty_negatives=True,
                      empty_negatives_from=start)
    model, meta = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96, "overlap": 0}, val_tiles=[])
    assert seen == expected
    assert model.config.empty_negatives is True and meta["arch_args"]["empty_negatives"] is True
    assert meta["training"]["config"]["empty_negatives_from"] == start
    with pytest.raises(ValueError, match="empty_negatives_from"):
        train_detector(tiles, ["square"], TrainConfig(max_seconds=None, epochs=1, steps_per_epoch=1,
                                                      crop_size=64, device="cpu",
                                                      val_fraction=0, arch=SMALL_ARCH, empty_negatives_from=1.0),
                       meta={"tile_size": 96, "overlap": 0}, val_tiles=[])


@pytest.mark.parametrize("patience", [None, 1])
def test_empty_negatives_warm_up_weights_are_never_kept(monkeypatch, patience):
    """With a warm-up, the best validation epoch may come before the empty crops joined: keeping it (or stopping
    early there) handed the user a model that never saw them. Epochs of the warm-up are logged, not kept."""
    import geors.train.detector as train_mod

    scores = iter([0.9, 0.5, 0.2, 0.4])  # validation AP50 per epoch: best in the warm-up, then falling
    monkeypatch.setattr(train_mod, "validation_ap50", lambda model, tiles, n: next(scores))
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 0)]
    cfg = TrainConfig(max_seconds=None, epochs=4, steps_per_epoch=2, batch_size=2, crop_size=64, device="cpu",
                      warmup_steps=1,
                      patience=patience, arch=SMALL_ARCH, empty_negatives=True, empty_negatives_from=0.5)
    _, meta = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96, "overlap": 0},
                             val_tiles=[squares_tile(rng, 2), squares_tile(rng, 0)])
    tr = meta["training"]
    assert tr["steps"] == 8 and tr["stop_reason"].startswith("planned steps done")
    assert tr["best_step"] == 8 and tr["best_val_AP50"] == pytest.approx(0.4)  # epoch 4, after the warm-up
    assert [v.get("selectable") for v in tr["validation"]] == [False, False, True, True]


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


@pytest.mark.slow
@pytest.mark.parametrize("empty_negatives", [True, False])
def test_cheap_gate_training_separates_empty_from_object_crops(empty_negatives):
    # True = empty crops also train the detector, False = the paper and the default (they train only the gate).
    # With empty negatives the shared backbone also gets detector gradients from empty crops and the toy gate
    # separates later and less reliably. Measured over training seeds 0-5 on one machine (2 x 80 steps): without,
    # every fresh tile with squares scored above every empty one (gap of the means 0.36-0.81); with, the means
    # were ordered in all 6 (gap 0.05-0.90) but one seed let an empty tile score above a tile with squares. The
    # absolute scores move with the CPU (an earlier machine's seed 0 gave gaps of 0.68 / 0.77; this one 0.12 /
    # 0.81), so the test asserts the ordering, not a fixed gap.
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 4), squares_tile(rng, 4), squares_tile(rng, 0), squares_tile(rng, 0)]
    val = [squares_tile(rng, 3), squares_tile(rng, 2), squares_tile(rng, 0), squares_tile(rng, 2)]
    cfg = TrainConfig(max_seconds=None, epochs=2, steps_per_epoch=80, batch_size=4, crop_size=64, device="cpu",
                      lr=5e-3,
                      warmup_steps=5, gate_input_scale=4, patience=None, arch=SMALL_ARCH,
                      empty_negatives=empty_negatives)
    model, meta = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96, "overlap": 0}, val_tiles=val)
    assert model.config.empty_negatives is empty_negatives
    assert model.config.gate_input_scale == 4 and model.config.gate_pool == "top3"
    assert meta["arch_args"]["gate_input_scale"] == 4 and meta["training"]["gate_input_scale"] == 4
    calib = meta["training"]["gate_calibration"]
    assert calib["status"] == "calibrated" and calib["n_pos_tiles"] == 3 and calib["n_empty_tiles"] == 1
    assert calib["achieved_recall"] == 1.0 and calib["target_recall"] == GATE_TARGET_RECALL
    assert len(meta["training"]["validation"]) == 2  # one validation AP50 per epoch
    assert meta["training"]["best_val_AP50"] == max(v["val_AP50"] for v in meta["training"]["validation"])
    det = Detector(model, meta, torch.device("cpu"))
    fresh = np.random.default_rng(5)
    pos = det.gate(np.stack([squares_tile(fresh, 2).image for _ in range(8)]))
    neg = det.gate(np.stack([squares_tile(fresh, 0).image for _ in range(8)]))
    assert pos.mean() > neg.mean(), (pos, neg)
    if not empty_negatives:
        assert pos.min() > neg.max(), (pos, neg)


@pytest.mark.parametrize("seed", range(20))
def test_calibration_meets_recall_target_on_synthetic_scores(seed):
    rng = np.random.default_rng(seed)
    n_pos = int(rng.integers(1, 400))
    pos = rng.beta(rng.uniform(0.3, 5), rng.uniform(0.3, 5), n_pos)
    if seed % 3 == 0:
        pos = np.round(pos, 1)  # ties
    neg = rng.beta(1, 4, int(rng.integers(0, 300)))
    target = float(rng.choice([0.5, 0.9, 0.95, GATE_TARGET_RECALL, 1.0]))
    c = calibrate_gate_threshold(pos, neg, target, min_positive=1, min_empty=0)  # the rule, whatever the evidence
    assert c["status"] == "calibrated" and c["target_recall"] == target
    assert (pos >= c["gate_threshold"]).mean() >= target
    assert c["achieved_recall"] == pytest.approx((pos >= c["gate_threshold"]).mean())
    # the highest such threshold: any higher value loses positives below the target
    higher = pos[pos > c["gate_threshold"]]
    if len(higher):
        assert (pos >= higher.min()).mean() < target
    assert c["pass_rate"] == pytest.approx((np.concatenate([pos, neg]) >= c["gate_threshold"]).mean())


def test_calibration_never_rejects_more_training_tiles_than_the_target():
    # lucky validation tiles would set 0.9; the training tiles with objects pull it down
    c = calibrate_gate_threshold(np.array([0.9, 0.95, 0.92]), np.array([0.1]), 0.99,
                                 train_pos_scores=np.array([0.95, 0.4, 0.6]))
    assert c["gate_threshold"] == 0.4 and c["train_recall"] == 1.0 and c["achieved_recall"] == 1.0


def test_calibration_without_positive_tiles_disables_the_gate():
    c = calibrate_gate_threshold(np.zeros(0), np.array([0.2, 0.9]))
    assert c["status"] == "disabled" and c["gate_threshold"] == 0.0 and c["pass_rate"] == 1.0
    with pytest.raises(ValueError):
        calibrate_gate_threshold(np.ones(3), np.zeros(0), 0.0)
    assert issubclass(GateCalibrationError, ValueError)


def test_validation_split_keeps_both_kinds_on_each_side():
    rng = np.random.default_rng(0)
    big = squares_tile(rng, 12, side=256)
    empty = squares_tile(rng, 0, side=200)
    train, val = split_validation([big, empty], 0.25, seed=0, tile_size=96, overlap=32)
    assert all(t.image.shape == (3, 96, 96) for t in train + val)  # enough tiles: whole inference tiles held back
    n_grid = 16 + 9
    assert len(val) >= 2 and len(train) + len(val) <= n_grid  # (a training tile almost all validation is dropped)
    for side in (train, val):
        assert any(len(t.boxes) for t in side) and any(not len(t.boxes) for t in side)
    assert split_validation([big], 0, tile_size=96, overlap=32) == ([big], [])


def test_runs_with_different_seeds_are_validated_on_the_same_tiles():
    """The validation split follows ``split_seed``, not ``seed``: before, each ``--seed`` held out other tiles,
    so the validation AP50 of runs could not be compared and a gate step with another seed calibrated on
    tiles its detector had trained on."""
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 12, side=256), squares_tile(rng, 0, side=200)]
    cfg = dict(max_seconds=None, epochs=1, steps_per_epoch=1, batch_size=1, crop_size=64, device="cpu",
               warmup_steps=1,
               gate_input_scale=1, val_fraction=0.25, patience=None, arch=SMALL_ARCH)
    meta_tile = {"tile_size": 96, "overlap": 32}

    def held_out(**kw):
        _, meta = train_detector(tiles, ["square"], TrainConfig(**cfg, **kw), meta=dict(meta_tile))
        return meta["training"]["validation_tiles"]

    seeds = [held_out(seed=s) for s in (0, 1, 2, 3)]
    assert seeds[0] and all(v == seeds[0] for v in seeds)
    assert any(held_out(seed=0, split_seed=s) != seeds[0] for s in (1, 2, 3))  # the split seed does move it


def _squares_scene(path, rng, side=256, n=10, part=160):
    """A georeferenced scene with bright squares in its upper-left ``part`` px only (the rest is empty)."""
    t = squares_tile(rng, n, side=part)
    img = rng.uniform(0, 0.25, (3, side, side)).astype(np.float32)
    img[:, :part, :part] = t.image
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as ds:
        ds.write((img * 255).astype(np.uint8))
    return t.boxes


def test_own_training_scene_never_loses_detections_to_the_gate(tmp_path, monkeypatch):
    """geors train (default gate settings) -> the gate passes every tile of its training scene that
    yields detections without the gate; the CLI goes through ``calibrate_gate``."""
    import geors.train.detector as td
    from geors import open_scene
    from geors.cli.train import train_group as main
    from geors.tiling import TileGrid

    scene = tmp_path / "sq.tif"
    boxes = _squares_scene(scene, np.random.default_rng(3), side=384, n=30, part=256)
    labels = tmp_path / "sq.xml"
    _write_voc(labels, boxes)
    calls = []
    real = td.calibrate_gate
    monkeypatch.setattr(td, "calibrate_gate", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(main, ["detector", "--scene", str(scene), "--labels", str(labels),
                                  "--max-minutes", "0", "--epochs", "4", "--steps-per-epoch", "25",
                                  "--batch-size", "2", "--crop", "64",
                                  "--tile", "96", "--overlap", "32", "--device", "cpu", "--lr", "5e-3",
                                  "--val-fraction", "0.4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert calls == [1]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    calib = summary["gate_calibration"]
    # the gate is in use: a disabled gate (threshold 0, as on a scene too small for the evidence rule) passes
    # every tile, and the comparisons below could not fail
    assert calib["status"] == "calibrated" and calib["gate_threshold"] > 0, calib
    assert calib["achieved_recall"] >= calib["target_recall"] == GATE_TARGET_RECALL
    assert f"Model written to {out}" in r.output and "geors detect" in r.output and "score threshold" in r.output
    det = Detector.load(out, device="cpu")
    assert summary["score_threshold"] == det.meta["score_threshold"]
    assert det.meta["training"]["score_calibration"]["score_threshold"] == det.meta["score_threshold"]
    sc = open_scene(scene)
    grid = TileGrid(sc, det.tile_size, det.overlap)
    x = np.stack([sc.read_tile(t).image for t in grid])
    probs, gated = det.gate_and_detect(x, gate_threshold=det.meta["gate_threshold"])
    _, ungated = det.gate_and_detect(x, gate_threshold=None)
    n_gated, n_ungated = sum(len(d[0]) for d in gated), sum(len(d[0]) for d in ungated)
    assert det.meta["gate_threshold"] == calib["gate_threshold"] > 0 and n_ungated > 0
    assert n_gated == n_ungated, (probs, det.meta["gate_threshold"])
    # the same through `geors detect` with its default settings vs --no-gate
    from geors.cli.main import main as geors_main

    counts = []
    for extra in ([], ["--no-gate"]):
        gpkg = tmp_path / f"det{len(extra)}.gpkg"
        r = CliRunner().invoke(geors_main, ["detect", str(scene), "-o", str(gpkg), "--model", str(out),
                                            "--device", "cpu", "--progress", "none", *extra])
        assert r.exit_code == 0, r.output
        counts.append(json.loads(r.output.strip().splitlines()[-1])["detections"])
    assert counts[0] == counts[1] > 0  # (the pipeline keeps each object once, in the tile core owning it)


def test_example_and_cli_share_one_calibration_path():
    import ast
    from pathlib import Path

    src = (Path(__file__).parents[1] / "experiments" / "train_default_model.py").read_text()
    called = {n.func.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "train_detector" in called  # which splits and calibrates; the example has no calibration of its own
    assert not {"calibrate_gate", "split_validation"} & called
    assert "max_threshold" not in src and "calibrate_gate_threshold" not in src


def test_training_stops_at_the_time_budget_and_logs_eta(caplog):
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 3), squares_tile(rng, 0)]
    cfg = TrainConfig(epochs=100, steps_per_epoch=50, batch_size=2, crop_size=48, device="cpu", log_every=1,
                      max_seconds=0.5, val_fraction=0, arch=SMALL_ARCH)
    with caplog.at_level("INFO", logger="geors.train"):
        _, meta = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96, "overlap": 0})
    assert meta["training"]["steps"] < 5000 and "time budget" in meta["training"]["stop_reason"]
    assert "ETA" in caplog.text
    assert meta["gate_threshold"] == 0.0 and meta["training"]["gate_calibration"]["status"] == "disabled"
    assert meta["score_threshold"] is None and meta["training"]["score_calibration"]["status"] == "default"


def test_cli_train_on_ungeoreferenced_image_names_the_flag(tmp_path):
    from geors.cli.train import train_group as main

    png = tmp_path / "plain.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png)
    labels = tmp_path / "l.xml"
    _write_voc(labels, [[2, 2, 10, 10]])
    r = CliRunner().invoke(main, ["detector", "--scene", str(png), "--labels", str(labels), "-o",
                                  str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "--allow-ungeoreferenced" in r.output


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


def test_gate_only_training_leaves_detections_unchanged(tmp_path):
    from geors.models.registry import save_model

    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 3), squares_tile(rng, 0), squares_tile(rng, 0)]
    base = TrainConfig(max_seconds=None, epochs=1, steps_per_epoch=5, batch_size=2, crop_size=64, device="cpu",
                       val_fraction=0,
                       gate_pool="avg", arch=SMALL_ARCH)
    m0, meta0 = train_detector(tiles, ["square"], base, meta={"tile_size": 96, "overlap": 0})
    path = save_model(m0, meta0, tmp_path / "m0.safetensors")
    cfg = TrainConfig(max_seconds=None, epochs=1, steps_per_epoch=5, batch_size=2, crop_size=64, device="cpu",
                      val_fraction=0,
                      init_from=str(path), train_only="gate", gate_pool="top3", lr=1e-2, arch=SMALL_ARCH)
    m1, meta1 = train_detector(tiles, ["square"], cfg, meta={"tile_size": 96, "overlap": 0})
    assert meta1["arch_args"]["gate_pool"] == "top3" and meta1["training"]["train_only"] == "gate"
    s0, s1 = m0.state_dict(), m1.state_dict()
    changed = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    assert changed and all(k.startswith("gate_head.") for k in changed)
    x = np.stack([t.image for t in tiles])
    d0 = Detector(m0, meta0, torch.device("cpu")).detect(x, score_threshold=0.0)
    d1 = Detector(m1, meta1, torch.device("cpu")).detect(x, score_threshold=0.0)
    for a, b in zip(d0, d1, strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_ohem_trains_the_head_on_the_hardest_rois_only():
    """``roi_ohem = n``: the second-stage loss is the mean over at most n RoIs per crop, the hardest ones."""
    from geors.models.r2cnn import R2CNN, R2CNNConfig

    rng = np.random.default_rng(0)
    t = squares_tile(rng, 3, side=64)
    x = torch.from_numpy(t.image[None].copy())
    targets = [{"boxes": torch.from_numpy(t.boxes), "labels": torch.zeros(3, dtype=torch.int64)}]
    torch.manual_seed(0)
    base = R2CNN(R2CNNConfig(**SMALL_ARCH)).train()
    ohem = R2CNN(R2CNNConfig(**SMALL_ARCH, roi_ohem=8)).train()
    ohem.load_state_dict(base.state_dict())
    det = ohem.det_conv(ohem.features(x))
    obj, reg = ohem._rpn(det)
    props = ohem._proposals(obj, reg, ohem.anchors(*det.shape[-2:], det.device), (64, 64), training=True)
    cls_all = ohem._roi_loss(det, props, targets)[0].detach()
    # the same RoIs through the head, every per-RoI cross-entropy: OHEM's mean is at least the overall mean
    rois = torch.cat([props[0], targets[0]["boxes"]])
    cls, _ = ohem._roi_outputs(det, [rois])
    lab = torch.where(ohem.roi_matcher(box_iou(targets[0]["boxes"], rois)) >= 0, 1, 0)
    per = torch.nn.functional.cross_entropy(cls, lab, reduction="none").detach()
    assert float(cls_all) >= float(per.mean()) - 1e-6
    assert float(cls_all) <= float(per.max()) + 1e-6
    losses = ohem.compute_losses(x, targets)
    losses["total"].backward()
    assert ohem.ps_cls.weight.grad is not None and ohem.ps_cls.weight.grad.abs().sum() > 0
    assert R2CNNConfig().roi_ohem == 0  # off by default: older model files train as before


def test_ema_keeps_the_moving_average_of_the_weights():
    from geors.models.r2cnn import R2CNN, R2CNNConfig
    from geors.train.detector import _ema_update

    torch.manual_seed(0)
    a, b = R2CNN(R2CNNConfig(**SMALL_ARCH)), R2CNN(R2CNNConfig(**SMALL_ARCH))
    sa = {k: v.clone() for k, v in a.state_dict().items()}
    _ema_update(a, b, 0.75)
    for k, v in a.state_dict().items():
        want = 0.75 * sa[k] + 0.25 * b.state_dict()[k] if v.dtype.is_floating_point else b.state_dict()[k]
        assert torch.allclose(v, want.to(v.dtype), atol=1e-6), k
    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 3), squares_tile(rng, 0)]
    kw = dict(max_seconds=None, epochs=1, steps_per_epoch=4, batch_size=2, crop_size=64, device="cpu",
              val_fraction=0, arch=SMALL_ARCH)
    m0, _ = train_detector(tiles, ["square"], TrainConfig(**kw), meta={"tile_size": 96})
    m1, meta1 = train_detector(tiles, ["square"], TrainConfig(**kw, ema_decay=0.9), meta={"tile_size": 96})
    assert meta1["training"]["config"]["ema_decay"] == 0.9
    assert any(not torch.equal(v, m1.state_dict()[k]) for k, v in m0.state_dict().items())


def test_a_fine_tune_that_validates_worse_keeps_the_starting_weights(tmp_path, caplog):
    # regression (issue 28, the analyst's loop): a fine-tune on a few corrected objects could validate worse
    # than the model it started from, and the worse weights were written (a round of corrections made the
    # vehicle model worse on average): the starting weights are now a candidate of the best-weights choice
    from geors.models.registry import save_model

    rng = np.random.default_rng(0)
    tiles = [squares_tile(rng, 4), squares_tile(rng, 4), squares_tile(rng, 0), squares_tile(rng, 0)]
    val = [squares_tile(rng, 3), squares_tile(rng, 2), squares_tile(rng, 0), squares_tile(rng, 2)]
    base = TrainConfig(max_seconds=None, epochs=1, steps_per_epoch=120, batch_size=4, crop_size=64, device="cpu",
                       lr=5e-3, warmup_steps=5, patience=None, arch=SMALL_ARCH)
    m0, meta0 = train_detector(tiles, ["square"], base, meta={"tile_size": 96, "overlap": 0}, val_tiles=val)
    assert meta0["training"]["best_val_AP50"] > 0.2  # the starting model finds squares
    path = save_model(m0, meta0, tmp_path / "m0.safetensors")
    # a learning rate that wrecks the detector in a few steps
    wreck = TrainConfig(max_seconds=None, epochs=1, steps_per_epoch=6, batch_size=4, crop_size=64, device="cpu",
                        lr=50.0, warmup_steps=1, patience=None, init_from=str(path), arch=SMALL_ARCH)
    # validated on other tiles than the starting model was (as corrections are): thresholds calibrated there differ
    val2 = [squares_tile(rng, 3), squares_tile(rng, 2), squares_tile(rng, 0), squares_tile(rng, 3)]
    with caplog.at_level("WARNING", logger="geors.train"):
        m1, meta1 = train_detector(tiles, ["square"], wreck, meta={"tile_size": 96, "overlap": 0}, val_tiles=val2)
    tr = meta1["training"]
    assert tr["validation"][0]["step"] == 0 and tr["validation"][0]["starting_weights"]
    assert tr["kept_starting_weights"] and tr["best_step"] == 0
    assert tr["validation"][-1]["val_AP50"] < tr["validation"][0]["val_AP50"]  # the fine-tune did validate worse
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert all(torch.equal(s0[k], s1[k]) for k in s0)
    # and its thresholds: the model written detects exactly as the one it started from
    assert meta1["gate_threshold"] == meta0["gate_threshold"] and meta1["score_threshold"] == meta0["score_threshold"]
    assert "starting weights" in caplog.text
