"""Detector predictor: load an R2-CNN model once, then gate and detect tiles.

Holds the state of the gate/detect stages (model, device, precision); the
pipeline calls it per batch of tiles. Inputs are float32 ``(B, C, H, W)`` numpy
arrays in ``[0, 1]``, the scene-wide stretched pixels of
``Scene.read_tile(tile).image``. Outputs are tile-local pixel boxes.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from geors.config import DEFAULT_SCORE_THRESHOLD
from geors.device import resolve_device
from geors.errors import BandError, ConfigError

__all__ = ["Detector", "TileDetections", "gate_passes", "trim_padding", "padding_groups", "GATE_TOLERANCE"]

log = logging.getLogger(__name__)

TileDetections = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(boxes (N, 4) float32 xyxy tile px, scores (N,) float32, class_ids (N,) int64)``."""


GATE_TOLERANCE = 1e-5
"""A tile passes the gate when its probability is at least the threshold minus this.

Calibration puts the threshold exactly on the probability of the weakest tile
with objects (:func:`geors.train.detector.calibrate_gate`), computed by the
training-time network. Inference computes the same function with other
kernels (batch norms folded into the convolutions, channels-last memory, GPU
or another thread count), which differ in the last float bits: without a
tolerance that tile can fall 1e-7 below its own threshold and lose its objects.
"""


def gate_passes(probs, threshold: float):
    """Which gate probabilities pass ``threshold`` (:data:`GATE_TOLERANCE` below it still passes)."""
    return probs >= threshold - GATE_TOLERANCE


MIN_TRIMMED_SIDE = 32
"""Smallest side :func:`trim_padding` leaves (the backbone downsamples by 16)."""


def trim_padding(images: torch.Tensor) -> torch.Tensor:
    """Drop the zero padding at the bottom and right of a batch of tiles.

    A scene smaller than a tile is read padded with zeros to the tile size
    (``Scene.read_tile``). The detector was trained on crops inside the
    images, so the hard edge between the scene and the padding looks like an
    object boundary: boxes pile up along it and the gate's evidence changes.
    Rows and columns at the end of both axes where every band of every tile
    is exactly 0 carry no pixels, so the batch is cut to the extent that does
    (at least :data:`MIN_TRIMMED_SIDE` px). Boxes keep their coordinates:
    only the bottom/right is removed. A batch without such padding is returned
    unchanged.

    Args:
        images: ``(B, C, H, W)``.

    Returns:
        ``(B, C, H', W')`` view with ``H' <= H``, ``W' <= W``.
    """
    h, w = images.shape[-2:]
    nz = images.ne(0).flatten(0, 1).any(dim=0)  # (H, W): any band of any tile is non-zero
    rows = torch.nonzero(nz.any(dim=1)).flatten()
    cols = torch.nonzero(nz.any(dim=0)).flatten()
    if rows.numel() == 0 or cols.numel() == 0:
        return images
    h2 = min(h, max(int(rows[-1]) + 1, MIN_TRIMMED_SIDE))
    w2 = min(w, max(int(cols[-1]) + 1, MIN_TRIMMED_SIDE))
    if (h2, w2) == (h, w):
        return images
    return images[..., :h2, :w2]


def padding_groups(images: torch.Tensor) -> list[tuple[list[int], torch.Tensor]]:
    """The batch split by each tile's own padding extent, each group trimmed to it.

    :func:`trim_padding` of a whole batch cuts to the extent of its largest
    tile, so a tile's input (and so its gate probability and boxes) would
    depend on its batch mates. Here every tile is trimmed by its own zero
    rows and columns (the rule of :func:`trim_padding` applied to the tile
    alone), and tiles that end up with the same shape run together.

    Returns:
        ``[(tile indexes, (b, C, h, w) view), ...]`` covering every tile once, in order of first index.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(images.shape[0]):
        h2, w2 = trim_padding(images[i:i + 1]).shape[-2:]
        groups.setdefault((int(h2), int(w2)), []).append(i)
    if len(groups) == 1:
        (h2, w2), idx = next(iter(groups.items()))
        return [(idx, images[..., :h2, :w2])]
    return [(idx, images[idx][..., :h2, :w2]) for (h2, w2), idx in groups.items()]


def float32_at_least(threshold: float) -> float:
    """The smallest float32 value >= ``threshold``: scores are float32, so comparing them with it in float32
    keeps exactly the scores that are at least ``threshold`` in float64 (as written and evaluated)."""
    t32 = np.float32(threshold)
    if float(t32) < threshold:
        t32 = np.nextafter(t32, np.float32(np.inf))
    return float(t32)


class Detector:
    """Gate + detector predictor around an R2-CNN model.

    Create with :meth:`load`. Attributes: ``model``, ``meta`` (model metadata),
    ``classes``, ``bands`` (band count the model expects), ``tile_size``,
    ``overlap`` (pixels), ``device``, ``name``.
    """

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: torch.device, precision: str = "auto"):
        self.model = model.eval().to(device)
        self.meta = meta
        self.device = device
        self.classes: list[str] = list(meta["classes"])
        self.bands: int = int(meta["bands"])
        self.tile_size: int = int(meta["tile_size"])
        self.overlap: int = int(meta.get("overlap", 0))
        self.name: str = str(meta.get("name") or os.path.basename(str(meta.get("path", "model"))))
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        if device.type != "cuda":
            precision = "fp32"  # autocast on CPU is slower than fp32 for these small convs
        elif precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.precision = precision

    @classmethod
    def load(cls, name_or_path: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto") -> Detector:
        """Load a model file or built-in name (None = default model) onto ``device`` (auto/cpu/cuda)."""
        from geors.models.registry import load_model
        from geors.models.tinynet import fold_batchnorm

        dev = resolve_device(device)
        model, meta = load_model(name_or_path, dev)
        fold_batchnorm(model)  # inference only: batch norms folded into the convolutions (~20% faster on CPU)
        log.info("loaded model %s (%s) on %s", meta.get("path"), ", ".join(meta["classes"]), dev)
        return cls(model, meta, dev, precision)

    @property
    def score_threshold(self) -> float:
        """The model's detection score threshold: calibrated on its validation tiles by ``geors train``
        (``meta["score_threshold"]``), else :data:`geors.config.DEFAULT_SCORE_THRESHOLD` (0.3)."""
        value = self.meta.get("score_threshold")
        return DEFAULT_SCORE_THRESHOLD if value is None else float(value)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W) float32, got shape {arr.shape}")
        if arr.shape[1] != self.bands:
            raise BandError(
                f"model {self.name} was trained on {self.bands}-band images but the tiles have "
                f"{arr.shape[1]} band(s). Select {self.bands} bands (e.g. --bands 1,2,3) or use a model "
                f"trained for {arr.shape[1]} band(s)."
            )
        # Channels-last (NHWC) memory: oneDNN's NCHW path for the 3-band first convolutions does not use a
        # second thread; NHWC runs the Tiny-Net backbone of a 640 px tile ~2x faster on 2 CPU cores.
        x = torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(self.device)
        return x.contiguous(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def gate(self, images: np.ndarray) -> np.ndarray:
        """Probability that each tile contains objects.

        With ``gate_input_scale > 1`` in the model's ``arch_args`` the gate
        reads the tiles average-pooled by that factor (cheap path, see
        :mod:`geors.models.r2cnn`); at 1 it reads the full-resolution map.

        Args:
            images: ``(B, C, H, W)`` float32 in ``[0, 1]``.

        Returns:
            ``(B,)`` float32 probabilities.
        """
        x = self._to_tensor(images)
        probs = np.zeros(x.shape[0], np.float32)
        for idx, xs in padding_groups(x):  # each tile trimmed by its own padding: batch mates change nothing
            with self._autocast():
                logits = self.model.gate_forward(xs)
            probs[idx] = logits.float().softmax(dim=1)[:, 1].cpu().numpy()
        return probs

    @torch.no_grad()
    def detect(self, images: np.ndarray, score_threshold: float | None = None) -> list[TileDetections]:
        """Detector branch on every tile (no gating).

        Args:
            images: ``(B, C, H, W)`` float32 in ``[0, 1]``.
            score_threshold: minimum class probability kept; None = the
                model's (:attr:`score_threshold`).

        Returns:
            Per tile ``(boxes (N, 4) float32 xyxy tile pixels, scores (N,) float32, class_ids (N,) int64)``.
        """
        return self.gate_and_detect(images, gate_threshold=None, score_threshold=score_threshold)[1]

    @torch.no_grad()
    def gate_and_detect(
        self, images: np.ndarray, gate_threshold: float | None = 0.5, score_threshold: float | None = None
    ) -> tuple[np.ndarray, list[TileDetections]]:
        """Gate every tile and run the detector only on tiles that pass.

        At ``gate_input_scale == 1`` (paper, older model files) the backbone
        runs once at full resolution and both branches share it. At
        ``gate_input_scale = s > 1`` the gate pass runs the backbone on the
        batch pooled by ``s``, and the full-resolution backbone + detector run
        only on the tiles that pass (all tiles when ``gate_threshold`` is None,
        whose gate probabilities are then still reported). This deviates from
        the paper's single shared pass because on CPU the backbone, not the
        detector branch, dominates the per-tile cost. Zero padding at the
        bottom/right of each tile (a scene smaller than a tile) is cut off
        first, tile by tile (:func:`padding_groups`), so a tile's result does
        not depend on the tiles batched with it; boxes stay in tile pixels.

        Args:
            images: ``(B, C, H, W)`` float32 in ``[0, 1]``.
            gate_threshold: tiles with gate probability below it get no
                detections; None runs the detector on every tile.
            score_threshold: minimum class probability kept; None = the
                model's (:attr:`score_threshold`).

        Returns:
            ``(gate_probs (B,), detections per tile)``; skipped tiles have empty arrays.
        """
        if score_threshold is None:
            score_threshold = self.score_threshold
        x = self._to_tensor(images)
        probs = np.zeros(x.shape[0], np.float32)
        empty: TileDetections = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        out: list[TileDetections] = [empty] * x.shape[0]
        score_threshold = float32_at_least(score_threshold)
        for idx, xs in padding_groups(x):
            p, dets = self._gate_and_detect_group(xs, gate_threshold, score_threshold)
            probs[idx] = p
            for i, d in zip(idx, dets, strict=True):
                out[i] = d
        return probs, out

    def _gate_and_detect_group(self, x: torch.Tensor, gate_threshold: float | None, score_threshold: float
                               ) -> tuple[np.ndarray, list[TileDetections]]:
        """:meth:`gate_and_detect` of tiles of one trimmed shape."""
        h, w = x.shape[-2:]
        empty: TileDetections = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        shared = int(getattr(self.model.config, "gate_input_scale", 1)) == 1
        with self._autocast():
            if shared:
                feats = self.model.features(x)
                probs = self.model.gate_logits(feats).float().softmax(dim=1)[:, 1]
            else:
                probs = self.model.gate_forward(x).float().softmax(dim=1)[:, 1]
            run = torch.ones_like(probs, dtype=torch.bool) if gate_threshold is None else gate_passes(probs, gate_threshold)
            idx = torch.nonzero(run).flatten()
            out: list[TileDetections] = [empty] * x.shape[0]
            if idx.numel():
                sel = feats[idx] if shared else self.model.features(x[idx])
                dets = self.model.detect_from_features(sel, (h, w), score_threshold)
                for i, d in zip(idx.tolist(), dets, strict=True):
                    out[i] = (
                        d.boxes.float().cpu().numpy().astype(np.float32),
                        d.scores.float().cpu().numpy().astype(np.float32),
                        d.labels.cpu().numpy().astype(np.int64),
                    )
        return probs.cpu().numpy(), out
