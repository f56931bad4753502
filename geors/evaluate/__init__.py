"""Evaluation of geors outputs against ground truth (detections; masks are added beside)."""

from __future__ import annotations

from geors.evaluate.detections import (
    COCO_IOU_THRESHOLDS,
    BoxTable,
    average_precision,
    box_iou,
    evaluate_detections,
    evaluate_gate,
)

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "BoxTable",
    "average_precision",
    "box_iou",
    "evaluate_detections",
    "evaluate_gate",
]
