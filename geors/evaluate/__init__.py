"""Evaluation of geors outputs against ground truth (detections; masks are added beside)."""

from __future__ import annotations

from geors.evaluate.detections import (
    COCO_IOU_THRESHOLDS,
    BoxTable,
    average_precision,
    box_iou,
    evaluate_detection_files,
    evaluate_detection_frames,
    evaluate_detections,
    evaluate_gate,
    gate_metrics,
)
from geors.evaluate.masks import evaluate_mask_files, miou_instances

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "BoxTable",
    "average_precision",
    "box_iou",
    "evaluate_detection_files",
    "evaluate_detection_frames",
    "evaluate_detections",
    "evaluate_gate",
    "gate_metrics",
    "evaluate_mask_files",
    "miou_instances",
]
