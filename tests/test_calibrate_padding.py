"""The calibration sees each tile as `geors detect` does (issue 26.5, training half).

Inference trims every tile by its own zero padding (``geors.detect.padding_groups``); the
calibration trimmed per batch, so a validation tile with zero rows (a scene's last rows) batched
with a full tile got another gate probability and other detections than `geors detect` gives it,
and the gate and score thresholds were calibrated on numbers inference never computes.
"""

from __future__ import annotations

import numpy as np
import torch

from geors.detect import Detector
from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.train.calibrate import gate_scores, validation_tables
from geors.train.crops import TrainTile


def _case():
    torch.manual_seed(0)
    model = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0], gate_input_scale=4, gate_pool="top3")).eval()
    rng = np.random.default_rng(1)
    full = rng.uniform(0.05, 1, (3, 128, 128)).astype(np.float32)
    edge = np.zeros((3, 128, 128), np.float32)
    edge[:, :72, :] = rng.uniform(0.05, 1, (3, 72, 128))  # the scene's last rows, zero below
    corner = np.zeros((3, 128, 128), np.float32)
    corner[:, :90, :60] = rng.uniform(0.05, 1, (3, 90, 60))
    box = np.array([[10.0, 10.0, 40.0, 40.0]], np.float32)
    tiles = [TrainTile(img, box, np.zeros(1, np.int64), name=n)
             for img, n in ((full, "full"), (edge, "edge"), (corner, "corner"), (full.copy(), "full2"))]
    det = Detector(model, {"classes": ["a"], "bands": 3, "tile_size": 128, "overlap": 0, "name": "t"},
                   torch.device("cpu"))
    return model, tiles, det


def test_gate_calibration_scores_equal_inference_per_tile():
    model, tiles, det = _case()
    batched = gate_scores(model, tiles, batch_size=4)  # mixed padding in one batch
    alone = np.array([det.gate(t.image[None])[0] for t in tiles])
    np.testing.assert_allclose(batched, alone, atol=1e-6)  # failed before: edge/corner differed by ~1e-3


def test_validation_table_equals_inference_per_tile():
    model, tiles, det = _case()
    pred, _ = validation_tables(model, tiles, batch_size=4)
    for j, t in enumerate(tiles):
        name = f"0:{j}:{t.name}"
        mine = pred["images"] == name
        boxes, scores, classes = det.detect(t.image[None], score_threshold=0.05)[0]
        assert mine.sum() == len(boxes) > 0, name
        # the same (score, class, box) rows; an untrained model ties many scores, so compare sorted rows
        ours = np.column_stack([pred["scores"][mine], pred["classes"][mine], pred["boxes"][mine]])
        theirs = np.column_stack([scores, classes, boxes])
        np.testing.assert_allclose(_sorted_rows(ours), _sorted_rows(theirs), atol=1e-3)


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    r = np.round(a, 2)
    return a[np.lexsort(r.T[::-1])]
