"""Training loop of the R2-CNN gate + detector from labelled tiles.

Input is a list of :class:`TrainTile` (image ``(C, H, W)`` float32 in ``[0, 1]``,
boxes ``(N, 4)`` xyxy tile pixels, class ids). Each step draws a batch of
random crops, half of them around a labelled object ("positive") and half
without any object ("empty") when empty examples exist, applies a random
flip/90° rotation, and minimises the joint R2-CNN loss (gate loss on every
crop, detector loss only on crops with targets unless ``empty_negatives``). With the cheap gate
(``gate_input_scale > 1``, the default of :class:`TrainConfig`) the gate loss
is computed on the crops average-pooled by that factor and the detector loss on
the full-resolution crops. The gate head is trained with the pooling it runs
with (``TrainConfig.gate_pool``, top-3 by default).

A validation split of the inference tile grid (``TrainConfig.val_fraction``)
is held out of training: it gives a validation AP50 per epoch (early stopping
keeps the best epoch) and calibrates the gate threshold
(:func:`calibrate_gate`, the one calibration path of ``geors train`` and
``examples/train_default_model.py``): the threshold is the highest value that
still passes ``gate_recall`` (0.99) of the validation tiles holding objects.
When no such threshold can be calibrated (no positive validation tile) the gate
is disabled (threshold 0: every tile reaches the detector) and a warning says
so; a calibration that misses its recall target raises
:class:`GateCalibrationError` rather than ship a gate that hides objects. The
same tiles set the model's detection score threshold
(:func:`calibrate_score_threshold`, highest F1).
CPU works for small runs; on CUDA the forward pass runs under mixed precision.
Everything is seeded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geors.errors import GeorsError, LabelError
from geors.models.r2cnn import INFERENCE_FIELDS, R2CNN, R2CNNConfig
from geors.train.anchors import box_sizes, kmeans_anchor_scales
from geors.train.augment import random_contrast, random_dihedral, random_photometric

__all__ = [
    "GATE_TARGET_RECALL",
    "GateCalibrationError",
    "TrainTile",
    "TrainConfig",
    "train_detector",
    "sample_batch",
    "split_validation",
    "gate_scores",
    "calibrate_gate",
    "calibrate_gate_threshold",
    "calibrate_score_threshold",
]

log = logging.getLogger(__name__)

MIN_VISIBLE = 0.5
"""A box cut by a crop is kept if at least this share of its area stays visible."""

GATE_TARGET_RECALL = 0.99
"""Share of the validation tiles holding objects that the calibrated gate must pass."""


class GateCalibrationError(GeorsError, ValueError):
    """A gate threshold that passes fewer positive validation tiles than the recall target."""


@dataclass
class TrainTile:
    """One labelled training image.

    Attributes:
        image: ``(C, H, W)`` float32 in ``[0, 1]``.
        boxes: ``(N, 4)`` xyxy in pixels of this image (N may be 0).
        class_ids: ``(N,)`` int, 0-based.
        name: for logs.
    """

    image: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    name: str = ""


@dataclass
class TrainConfig:
    """Options of :func:`train_detector` (sizes in pixels).

    Attributes:
        epochs: passes; one epoch = ``steps_per_epoch`` batches.
        steps_per_epoch: batches per epoch; None = one batch per
            ``8 * batch_size`` labelled objects (at least 1): a crop usually
            holds several objects.
        batch_size: crops per step.
        crop_size: side of the random training crops (the net is fully
            convolutional, so crops smaller than the inference tile are fine).
        scales: multi-scale training factors (image is resized by one of them).
        pos_fraction: share of crops centred on an object when empty examples exist.
        color_jitter: strength of the per-band gain / gamma jitter (0 = off).
        contrast_jitter: strength of the contrast reduction / per-band
            brightness offset (:func:`geors.train.augment.random_contrast`; 0 = off).
        saturation_jitter: strength s of the colour saturation jitter: each
            crop is blended with its grey image by a factor drawn from
            ``[1 - s, 1 + s]`` (0 = grey, 1 = unchanged; 0 = off).
        paste_fraction: share of positive crops pasted onto crops of images
            without objects (see :func:`sample_batch`; 0 = off).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay.
        ema_decay: keep an exponential moving average of the weights (and
            batch-norm statistics) with this decay per step (warm-up
            ``min(d, (1 + step) / (10 + step))``); the average is what is
            validated, kept and saved. 0 = off.
        assigner: ``"nwd_rka"`` (default) or ``"iou"`` for the RPN.
        num_anchor_scales: k of the anchor k-means.
        anchor_scales: fixed anchor sides; None = k-means over training boxes.
        nwd_c: NWD constant in pixels. geors keeps the paper's 12.7 rather than
            the mean object size: the constant sets the radius of the ignored
            zone around objects (NWD >= 0.3 means W2 <= 1.2 C), and with the
            ~35 px NEON crowns and dense canopy a mean-size C would ignore
            almost every anchor between trees, starving the RPN of negatives.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds numpy and torch (crops, jitter, initialisation).
        split_seed: seeds the validation split (:func:`split_validation`),
            independent of ``seed``: runs that differ only in ``seed`` are
            validated on the same tiles, so their validation AP50 can be
            compared (and one chosen by it), and a later ``train_only="gate"``
            step calibrates on the tiles the detector step did not train on.
        max_seconds: optional wall-clock budget; training stops early at it.
        log_every: steps between log lines.
        gate_input_scale: the gate reads crops/tiles average-pooled by this
            factor (4 = cheap gate, default for new models; 1 = the paper's
            gate on the shared full-resolution map).
        init_from: optional model file to start from (fine-tuning); its
            anchor scales and architecture arguments are kept, except
            ``gate_input_scale``, ``gate_pool``, ``arch`` overrides and the
            inference settings (:data:`geors.models.r2cnn.INFERENCE_FIELDS`,
            today's defaults). Class names must match up to case.
        gate_recall: share of the positive validation tiles the calibrated
            gate threshold must pass (see :func:`calibrate_gate`); None
            disables the gate (threshold 0).
        gate_pool: gate pooling the head is trained and run with: ``"topK"``
            (default ``"top3"``: mean of the K highest per-location margins) or
            ``"avg"`` (the paper's global average pooling).
        val_fraction: share of the inference-grid tiles (positive and empty
            separately, at least one of each kind when there are two or more)
            held out for the per-epoch validation AP50, early stopping and the
            gate calibration; 0 = no split (the gate is then disabled).
        patience: stop after this many epochs without a better validation
            AP50 and keep the best epoch's weights; None = no early stopping.
        empty_negatives: crops without objects also enter the detector loss
            (RPN negatives, background RoIs; :class:`R2CNNConfig`
            ``empty_negatives``), not only the gate loss as in the paper.
            None = off for a new model (the paper), the starting model's
            setting with ``init_from``. Measured on the NEON trees
            (docs/detector.md): for a fine-tune of a working detector it is
            the better choice (held-out AP50 0.33 vs 0.26 over seeds; 0 boxes
            per empty lake tile without the gate instead of 10-39); from
            scratch it held the detector back (2,400 steps: validation AP50
            0.031 vs 0.188, held-out 0.086 vs 0.232), hence off for a new model.
        empty_negatives_from: share of the schedule (0-1) trained as in the
            paper before empty crops join the detector loss (with
            ``empty_negatives`` on; 0 = from the first step; the last step
            always has them). A warm-up: the
            detector first learns to find objects, then to stay quiet on
            empty ground. Epochs validated during the warm-up are logged but
            never kept, and early stopping counts only the epochs after it,
            so the weights kept have trained on the empty crops.
        train_only: ``"gate"`` trains only the gate head (backbone, its
            batch-norm statistics and the detector branch stay frozen), e.g.
            to retrain a model's gate with another pooling without changing
            its detections; None trains everything.
        arch: other :class:`R2CNNConfig` fields to override.
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 4
    crop_size: int = 384
    scales: tuple[float, ...] = (1.0,)
    pos_fraction: float = 0.5
    color_jitter: float = 0.1
    paste_fraction: float = 0.0
    contrast_jitter: float = 0.0
    saturation_jitter: float = 0.0
    ema_decay: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    assigner: str = "nwd_rka"
    num_anchor_scales: int = 6
    anchor_scales: list[float] | None = None
    nwd_c: float = 12.7
    device: str = "auto"
    seed: int = 0
    split_seed: int = 0
    max_seconds: float | None = None
    log_every: int = 20
    gate_input_scale: int = 4
    init_from: str | None = None
    gate_recall: float | None = GATE_TARGET_RECALL
    gate_pool: str = "top3"
    val_fraction: float = 0.2
    patience: int | None = 3
    train_only: str | None = None
    empty_negatives: bool | None = None
    empty_negatives_from: float = 0.0
    arch: dict[str, Any] = field(default_factory=dict)


def _crop(
    tile: TrainTile, x0: int, y0: int, side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop ``side`` px at ``(x0, y0)``, zero-padding beyond the image; boxes clipped, slivers dropped."""
    c, h, w = tile.image.shape
    out = np.zeros((c, side, side), np.float32)
    xs, ys = max(x0, 0), max(y0, 0)
    xe, ye = min(x0 + side, w), min(y0 + side, h)
    if xe > xs and ye > ys:
        out[:, ys - y0 : ye - y0, xs - x0 : xe - x0] = tile.image[:, ys:ye, xs:xe]
    b = np.asarray(tile.boxes, np.float64).reshape(-1, 4) - [x0, y0, x0, y0]
    cl = np.clip(b, 0, side)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    vis = np.clip(cl[:, 2] - cl[:, 0], 0, None) * np.clip(cl[:, 3] - cl[:, 1], 0, None)
    keep = (area > 0) & (vis >= MIN_VISIBLE * area) & (vis > 0)
    return out, cl[keep].astype(np.float32), np.asarray(tile.class_ids, np.int64).reshape(-1)[keep]


def _touches_box(tile: TrainTile, x0: int, y0: int, side: int) -> bool:
    b = np.asarray(tile.boxes).reshape(-1, 4)
    return bool(np.any((b[:, 0] < x0 + side) & (b[:, 2] > x0) & (b[:, 1] < y0 + side) & (b[:, 3] > y0)))


def _paste_on_empty(
    crop: tuple[np.ndarray, np.ndarray, np.ndarray], empty_tiles: Sequence[TrainTile], side: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste a random window of a positive crop onto a crop of an image without objects (see sample_batch)."""
    img, bx, ci = crop
    ws = int(rng.integers(max(side // 4, 1), max(3 * side // 4, 1) + 1))
    src = TrainTile(img, bx, ci)
    # place the window around a random object so it holds one
    b = bx[int(rng.integers(len(bx)))]
    cx, cy = int((b[0] + b[2]) / 2), int((b[1] + b[3]) / 2)
    wx = int(np.clip(cx - int(rng.integers(ws)), 0, side - ws))
    wy = int(np.clip(cy - int(rng.integers(ws)), 0, side - ws))
    win, wbx, wci = _crop(src, wx, wy, ws)
    if not len(wbx):
        return crop
    t = empty_tiles[int(rng.integers(len(empty_tiles)))]
    _, h, w = t.image.shape
    base, _, _ = _crop(t, int(rng.integers(max(w - side, 0) + 1)), int(rng.integers(max(h - side, 0) + 1)), side)
    px, py = int(rng.integers(side - ws + 1)), int(rng.integers(side - ws + 1))
    base[:, py : py + ws, px : px + ws] = win
    return base, (wbx + np.array([px, py, px, py], np.float32)).astype(np.float32), wci


def sample_batch(
    tiles: Sequence[TrainTile],
    batch_size: int,
    crop_size: int,
    rng: np.random.Generator,
    pos_fraction: float = 0.5,
    scales: Sequence[float] = (1.0,),
    color_jitter: float = 0.0,
    paste_fraction: float = 0.0,
    contrast_jitter: float = 0.0,
    saturation_jitter: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Draw a balanced batch of augmented crops.

    A positive crop is placed so that a randomly chosen object's centre lies
    inside it; an empty crop comes from an image without objects, or is a
    random crop that touches no box (up to 20 tries; if none is found, a crop
    of an image without objects when there is one, otherwise a positive crop).
    Without any empty source every crop is positive.

    With ``paste_fraction > 0`` and images without objects, that share of the
    positive crops is a copy-paste composite: a random window (1/4 to 3/4 of
    the crop side, holding at least one object by the visibility rule) of the
    positive crop pasted at a random place on a crop of an image without
    objects. Real scenes have isolated stands of trees on open ground or
    water; dense-canopy crops alone teach the gate (global average pooling)
    that a tile is positive only when trees fill it.

    Returns:
        images ``(B, C, S, S)`` float32, per-crop boxes ``(N, 4)`` float32 xyxy
        crop pixels, per-crop class ids ``(N,)`` int64.
    """
    pos_tiles = [t for t in tiles if len(t.boxes)]
    empty_tiles = [t for t in tiles if not len(t.boxes)]
    if not pos_tiles:
        raise LabelError("no training image has labelled objects; check the labels and the scene.")
    imgs, boxes, cids = [], [], []
    for _ in range(batch_size):
        s = float(scales[int(rng.integers(len(scales)))])
        side = max(int(round(crop_size / s)), 8)
        crop = None
        if rng.random() >= pos_fraction:
            if empty_tiles and (rng.random() < 0.5 or len(pos_tiles) == 0):
                t = empty_tiles[int(rng.integers(len(empty_tiles)))]
                _, h, w = t.image.shape
                x0 = int(rng.integers(max(w - side, 0) + 1))
                y0 = int(rng.integers(max(h - side, 0) + 1))
                crop = _crop(t, x0, y0, side)
            else:
                for _try in range(20):
                    t = tiles[int(rng.integers(len(tiles)))]
                    _, h, w = t.image.shape
                    x0 = int(rng.integers(max(w - side, 0) + 1))
                    y0 = int(rng.integers(max(h - side, 0) + 1))
                    if not _touches_box(t, x0, y0, side):
                        crop = _crop(t, x0, y0, side)
                        break
                if crop is None and empty_tiles:
                    t = empty_tiles[int(rng.integers(len(empty_tiles)))]
                    _, h, w = t.image.shape
                    x0 = int(rng.integers(max(w - side, 0) + 1))
                    y0 = int(rng.integers(max(h - side, 0) + 1))
                    crop = _crop(t, x0, y0, side)
        if crop is None:
            t = pos_tiles[int(rng.integers(len(pos_tiles)))]
            _, h, w = t.image.shape
            b = np.asarray(t.boxes).reshape(-1, 4)[int(rng.integers(len(t.boxes)))]
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            lo_x, hi_x = int(math.floor(cx)) - side + 1, int(math.floor(cx))
            lo_y, hi_y = int(math.floor(cy)) - side + 1, int(math.floor(cy))
            # keep the crop inside the image when it can be
            lo_x, hi_x = max(lo_x, min(0, w - side)), min(hi_x, max(w - side, 0))
            lo_y, hi_y = max(lo_y, min(0, h - side)), min(hi_y, max(h - side, 0))
            x0 = int(rng.integers(lo_x, max(hi_x, lo_x) + 1))
            y0 = int(rng.integers(lo_y, max(hi_y, lo_y) + 1))
            crop = _crop(t, x0, y0, side)
            if empty_tiles and paste_fraction > 0 and rng.random() < paste_fraction:
                crop = _paste_on_empty(crop, empty_tiles, side, rng)
        img, bx, ci = crop
        img, bx = random_dihedral(img, bx, rng)
        img = random_photometric(img, rng, color_jitter)
        img = random_contrast(img, rng, contrast_jitter)
        img = _random_saturation(img, rng, saturation_jitter)
        if side != crop_size:
            f = crop_size / side
            img = F.interpolate(torch.from_numpy(img)[None], size=(crop_size, crop_size), mode="bilinear",
                                align_corners=False)[0].numpy()
            bx = bx * f
        imgs.append(img)
        boxes.append(bx.astype(np.float32))
        cids.append(ci)
    return np.stack(imgs), boxes, cids


def _random_saturation(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Blend a crop with its grey (band mean) image by a factor from ``[1 - s, 1 + s]``, clipped to ``[0, 1]``.

    Other forests differ in colour more than in shape (dead grey snags, yellow or
    blue-green crowns); a factor below 1 desaturates, above 1 saturates.
    ``strength = 0`` returns the image unchanged.
    """
    if strength <= 0 or image.shape[0] < 2:
        return image
    f = float(rng.uniform(max(1 - strength, 0.0), 1 + strength))
    grey = image.mean(axis=0, keepdims=True)
    return np.clip(grey + f * (image - grey), 0, 1).astype(np.float32)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_detector(
    tiles: Sequence[TrainTile],
    classes: Sequence[str],
    config: TrainConfig | None = None,
    meta: dict[str, Any] | None = None,
    val_tiles: Sequence[TrainTile] | None = None,
) -> tuple[R2CNN, dict[str, Any]]:
    """Train an R2-CNN gate + detector from scratch (or from ``config.init_from``).

    Args:
        tiles: labelled training images, see :class:`TrainTile`.
        classes: class names; ``class_ids`` index into it.
        config: training options.
        meta: extra model metadata (``tile_size``, ``overlap``, ``gsd_m``,
            ``normalisation``, ``training``...), merged into the result.
        val_tiles: validation tiles (inference-grid size); None = split
            ``config.val_fraction`` of ``tiles`` off with :func:`split_validation`.

    Returns:
        ``(model, meta)``: the trained model in eval mode on CPU, and metadata
        ready for :func:`geors.models.registry.save_model`. ``meta["gate_threshold"]``
        is the calibrated threshold (0 when the gate is disabled) and
        ``meta["training"]["gate_calibration"]`` records target, achieved
        recall, pass rates and status.

    Raises:
        LabelError: no labelled object, or class ids outside ``classes``.
        GateCalibrationError: the calibrated gate misses its recall target.
    """
    from geors.detect import resolve_device

    cfg = config or TrainConfig()
    tile_size = int((meta or {}).get("tile_size", 640))
    overlap = int((meta or {}).get("overlap", 128))
    all_boxes = np.concatenate([np.asarray(t.boxes, np.float64).reshape(-1, 4) for t in tiles]) if tiles else np.zeros((0, 4))
    all_ids = np.concatenate([np.asarray(t.class_ids, np.int64).reshape(-1) for t in tiles]) if tiles else np.zeros(0)
    if len(all_boxes) == 0:
        raise LabelError("no labelled objects in the training data; nothing to train on.")
    if len(classes) == 0 or all_ids.min() < 0 or all_ids.max() >= len(classes):
        raise LabelError(f"class ids must lie in 0..{len(classes) - 1} for classes {list(classes)}")
    bands = {t.image.shape[0] for t in tiles}
    if len(bands) != 1:
        raise LabelError(f"training images have different band counts {sorted(bands)}; use one band selection.")
    n_bands = bands.pop()
    if val_tiles is None:
        tiles, val_tiles = split_validation(tiles, cfg.val_fraction, cfg.split_seed, tile_size, overlap)
    val_tiles = list(val_tiles)
    val_pos = [t for t in val_tiles if len(t.boxes)]

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    init_meta: dict[str, Any] | None = None
    if cfg.init_from:
        from geors.models.registry import load_model

        init_model, init_meta = load_model(cfg.init_from, torch.device("cpu"))
        if ([c.lower() for c in init_meta["classes"]] != [c.lower() for c in classes]
                or int(init_meta["bands"]) != n_bands):
            raise LabelError(f"init_from {cfg.init_from}: classes {init_meta['classes']} / {init_meta['bands']} bands "
                             f"do not match the training data ({list(classes)} / {n_bands} bands).")
        classes = list(init_meta["classes"])  # equal up to case: keep the model's spelling
        defaults = R2CNNConfig()
        keep_or_set = {} if cfg.empty_negatives is None else {"empty_negatives": bool(cfg.empty_negatives)}
        arch_args = {**init_model.config.to_dict(), **{k: getattr(defaults, k) for k in INFERENCE_FIELDS},
                     "gate_pool": cfg.gate_pool, **keep_or_set, **cfg.arch,
                     "gate_input_scale": int(cfg.gate_input_scale)}
        arch = R2CNNConfig.from_dict(arch_args)
        scales = list(arch.anchor_scales)
        model = R2CNN(arch)
        model.load_state_dict(init_model.state_dict())
        model = model.to(device)
    else:
        scales = cfg.anchor_scales or kmeans_anchor_scales(all_boxes, cfg.num_anchor_scales)
        arch = R2CNNConfig(
            num_classes=len(classes), in_channels=n_bands, anchor_scales=list(scales), assigner=cfg.assigner,
            nwd_c=cfg.nwd_c, **{"gate_input_scale": int(cfg.gate_input_scale), "gate_pool": cfg.gate_pool,
                                "empty_negatives": bool(cfg.empty_negatives), **cfg.arch},
        )
        model = R2CNN(arch).to(device)
    if not 0.0 <= cfg.empty_negatives_from < 1.0:
        raise ValueError(f"empty_negatives_from must be in [0, 1), got {cfg.empty_negatives_from!r}")
    empty_negatives = bool(arch.empty_negatives)
    if cfg.train_only not in (None, "gate"):
        raise ValueError(f"train_only must be None or 'gate', got {cfg.train_only!r}")
    gate_only = cfg.train_only == "gate"
    if gate_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("gate_head."))
    _train_mode(model, gate_only)
    ema = None
    if cfg.ema_decay > 0:
        import copy

        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    n_pos_tiles = sum(1 for t in tiles if len(t.boxes))
    if n_pos_tiles == 0:
        raise LabelError("every tile with objects went to the validation split; lower the validation fraction.")
    spe = cfg.steps_per_epoch or max(1, int(math.ceil(len(all_boxes) / max(cfg.batch_size, 1) / 8)))
    total = max(cfg.epochs * spe, 1)
    # Steps trained as the paper before empty crops join the detector loss (0 without empty negatives;
    # at most total - 1, so that a short run still trains its last step, and validates its last epoch, with them).
    # Weights validated in the warm-up are not the training asked for: never kept, and early stopping
    # waits for the first epoch after it.
    warm_up_end = min(int(round(cfg.empty_negatives_from * total)), total - 1) if empty_negatives else 0
    if warm_up_end > 0:
        log.info("empty crops join the detector loss from step %d of %d; weights validated before that are "
                 "not kept", warm_up_end + 1, total)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    log.info("training R2-CNN on %d images (%d with objects, %d boxes), validation %d tiles (%d with objects); "
             "%d epochs x %d steps of %d crops of %d px on %s; anchor scales %s; assigner %s; gate pool %s",
             len(tiles), n_pos_tiles, len(all_boxes), len(val_tiles), len(val_pos), cfg.epochs, spe, cfg.batch_size,
             cfg.crop_size, device, [round(s, 1) for s in scales], cfg.assigner, arch.gate_pool)

    t0 = time.monotonic()
    running: dict[str, float] = {}
    history: list[float] = []
    val_history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    stop_reason = "all epochs done"
    step = 0
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, total, cfg.warmup_steps)
        imgs, bxs, cids = sample_batch(tiles, cfg.batch_size, cfg.crop_size, rng, cfg.pos_fraction, cfg.scales,
                                      cfg.color_jitter, cfg.paste_fraction, cfg.contrast_jitter, cfg.saturation_jitter)
        x = torch.from_numpy(imgs).to(device)
        targets = [
            {"boxes": torch.from_numpy(b).to(device), "labels": torch.from_numpy(c).to(device)}
            for b, c in zip(bxs, cids, strict=True)
        ]
        model.config.empty_negatives = empty_negatives and step >= warm_up_end
        with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp):
            losses = model.compute_losses(x, targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 10.0)
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        history.append(float(losses["total"].detach()))
        elapsed = time.monotonic() - t0
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            n = (step % cfg.log_every) + 1
            eta = elapsed / (step + 1) * (total - step - 1)
            if cfg.max_seconds is not None:
                eta = min(eta, max(cfg.max_seconds - elapsed, 0.0))
            log.info("step %d/%d %s | %.0f s, ETA %.0f s", step + 1, total,
                     " ".join(f"{k}={v / n:.3f}" for k, v in running.items()), elapsed, eta)
            running = {}
        out_of_time = cfg.max_seconds is not None and elapsed > cfg.max_seconds
        if ((step + 1) % spe == 0 or out_of_time) and val_pos:
            epoch = (step + 1) / spe
            scored = model if ema is None else ema
            scored.eval()
            ap50 = validation_ap50(scored, val_tiles, len(classes))
            _train_mode(model, gate_only)
            selectable = step + 1 > warm_up_end
            val_history.append({"epoch": round(epoch, 2), "step": step + 1, "val_AP50": ap50,
                                "selectable": selectable})
            improved = selectable and (best is None or ap50 > best[0])
            if selectable and (best is None or ap50 >= best[0]):  # ties: the later, longer-trained weights
                best = (ap50, step + 1, {k: v.detach().clone() for k, v in scored.state_dict().items()})
            if not selectable:
                note = f" (warm-up: not kept, empty crops join at step {warm_up_end + 1})"
            else:
                note = " best so far" if improved else f", best {best[0]:.3f} at step {best[1]}"
            log.info("epoch %.2f/%d: validation AP50 %.3f (%d tiles)%s", epoch, cfg.epochs, ap50, len(val_tiles),
                     note)
            kept = [v for v in val_history if v["selectable"]]
            if (cfg.patience is not None and selectable and not improved
                    and len(kept) - 1 - _index_of_best(kept) >= cfg.patience):
                stop_reason = f"early stop: no better validation AP50 for {cfg.patience} epochs"
                log.info("%s", stop_reason)
                break
        if out_of_time:
            stop_reason = f"time budget of {cfg.max_seconds:.0f} s reached after {step + 1} of {total} steps"
            if step + 1 <= warm_up_end:
                stop_reason += f", before the empty crops joined (step {warm_up_end + 1}): the model has not seen them"
            log.warning("stopping: %s", stop_reason)
            break
    seconds = time.monotonic() - t0
    model.config.empty_negatives = empty_negatives  # the model records how it was configured, not the last step
    if best is not None and (best[1] != step + 1 or ema is not None):
        model.load_state_dict(best[2])
        log.info("keeping the %sweights of step %d (best validation AP50 %.3f)",
                 "" if ema is None else "moving-average ", best[1], best[0])
    elif ema is not None:
        model.load_state_dict(ema.state_dict())
        log.info("keeping the moving-average weights of the last step")
    model.eval().cpu()
    calib = calibrate_gate(model, val_tiles, cfg.gate_recall, tile_size=tile_size, overlap=overlap,
                           train_tiles=tiles)
    gate_threshold = calib["gate_threshold"]
    score_calib = calibrate_score_threshold(model, val_tiles)

    sizes = box_sizes(all_boxes)
    out_meta: dict[str, Any] = {
        "architecture": "r2cnn",
        "arch_args": arch.to_dict(),
        "classes": list(classes),
        "bands": int(n_bands),
        "normalisation": {"method": "percentile_stretch", "percentiles": [2.0, 98.0], "scope": "scene",
                          "range": [0.0, 1.0], "dtype": "float32"},
        "tile_size": 640,
        "overlap": 128,
        "gsd_m": None,
        "gate_threshold": gate_threshold,
        "score_threshold": score_calib["score_threshold"],
        "anchor_scales": list(scales),
        "nwd_c": arch.nwd_c,
        "training": {
            "n_images": len(tiles),
            "n_images_with_objects": n_pos_tiles,
            "n_validation_tiles": len(val_tiles),
            "n_validation_tiles_with_objects": len(val_pos),
            "validation_tiles": [t.name for t in val_tiles],
            "n_boxes": int(len(all_boxes)),
            "per_class": {c: int((all_ids == i).sum()) for i, c in enumerate(classes)},
            "box_size_px": {"mean": float(sizes.mean()), "min": float(sizes.min()), "max": float(sizes.max())},
            "steps": step + 1,
            "best_step": best[1] if best is not None else step + 1,
            "best_val_AP50": float(best[0]) if best is not None else None,
            "stop_reason": stop_reason,
            "train_only": cfg.train_only,
            "validation": val_history,
            "seconds": round(seconds, 1),
            "device": str(device),
            "initial_loss": float(np.mean(history[:10])) if history else None,
            "final_loss": float(np.mean(history[-10:])) if history else None,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "gate_input_scale": int(arch.gate_input_scale),
            "gate_calibration": calib,
            "score_calibration": score_calib,
            "init_from": ({"path": str(cfg.init_from), "weights_sha256": init_meta.get("weights_sha256")}
                          if init_meta else None),
        },
    }
    if meta:
        training_extra = meta.get("training")
        out_meta.update({k: v for k, v in meta.items() if k != "training"})
        if training_extra:
            out_meta["training"].update(training_extra)
    return model, out_meta


@torch.no_grad()
def _ema_update(ema: R2CNN, model: R2CNN, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for floating-point weights and buffers; integer buffers copied."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
        else:
            e.copy_(m)


def _train_mode(model: R2CNN, gate_only: bool) -> None:
    """Training mode; with ``gate_only`` only the gate head (so frozen batch norms keep their statistics)."""
    if gate_only:
        model.eval()
        model.gate_head.train()
    else:
        model.train()


def _index_of_best(val_history: list[dict[str, Any]]) -> int:
    """Index of the first epoch with the highest validation AP50."""
    return int(np.argmax([v["val_AP50"] for v in val_history]))


def _grid_origins(length: int, tile_size: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - tile_size, 0) + 1, stride))
    if starts[-1] + tile_size < length:
        starts.append(length - tile_size)
    return starts


def grid_tiles(tiles: Sequence[TrainTile], tile_size: int, overlap: int) -> list[TrainTile]:
    """Cut images into the inference grid (``tile_size``, stride ``tile_size - overlap``, zero-padded
    beyond the image); boxes kept by the crop rule of :func:`sample_batch`. An image no larger than a
    tile stays one tile of its own size (not padded)."""
    stride = max(tile_size - overlap, 1)
    out = []
    for t in tiles:
        _, h, w = t.image.shape
        if h <= tile_size and w <= tile_size:
            out.append(t)
            continue
        for y0 in _grid_origins(h, tile_size, stride):
            for x0 in _grid_origins(w, tile_size, stride):
                img, bx, ci = _crop(t, x0, y0, tile_size)
                out.append(TrainTile(img, bx, ci, f"{t.name}@{x0},{y0}"))
    return out


def split_validation(
    tiles: Sequence[TrainTile], fraction: float, seed: int = 0, tile_size: int = 640, overlap: int = 128
) -> tuple[list[TrainTile], list[TrainTile]]:
    """Hold out ``fraction`` of the inference-grid tiles for validation.

    Images larger than a tile are first cut into the inference grid
    (:func:`grid_tiles`). Tiles with objects and empty tiles are drawn
    separately (seeded), at least one of each kind when there are two or more
    of that kind, so that the split always keeps training data. Neighbouring
    grid tiles overlap by ``overlap`` px, so a validation tile can share that
    strip with a training tile.

    Returns:
        ``(training tiles, validation tiles)``; with ``fraction <= 0`` the
        tiles unchanged and an empty list.
    """
    if fraction <= 0:
        return list(tiles), []
    if fraction >= 1:
        raise ValueError(f"the validation fraction must lie in [0, 1), got {fraction}")
    grid = grid_tiles(tiles, tile_size, overlap)
    rng = np.random.default_rng(seed + 7919)
    val_idx: set[int] = set()
    for kind in (True, False):
        idx = [i for i, t in enumerate(grid) if bool(len(t.boxes)) == kind]
        n = int(round(fraction * len(idx)))
        n = min(max(n, 1), len(idx) - 1) if len(idx) >= 2 else 0
        if n:
            val_idx.update(int(i) for i in rng.choice(idx, n, replace=False))
    train = [t for i, t in enumerate(grid) if i not in val_idx]
    val = [t for i, t in enumerate(grid) if i in val_idx]
    return train, val


@torch.no_grad()
def _validation_tables(model: R2CNN, val_tiles: Sequence[TrainTile], batch_size: int = 2) -> tuple[dict, dict]:
    """``(pred, truth)`` tables of ``model``'s detections (score >= 0.05, no gate) on ``val_tiles``."""
    from geors.detect import trim_padding

    dev = next(model.parameters()).device
    pred: dict[str, list] = {"boxes": [], "scores": [], "classes": [], "images": []}
    truth: dict[str, list] = {"boxes": [], "classes": [], "images": []}
    for i in range(0, len(val_tiles), batch_size):
        chunk = val_tiles[i : i + batch_size]
        shapes = {t.image.shape for t in chunk}
        groups = [chunk] if len(shapes) == 1 else [[t] for t in chunk]
        for grp in groups:
            x = trim_padding(torch.from_numpy(np.stack([t.image for t in grp])).to(dev))
            dets = model.detect_from_features(model.features(x), tuple(x.shape[-2:]), 0.05)
            for j, (t, d) in enumerate(zip(grp, dets, strict=True)):
                name = f"{i}:{j}:{t.name}"
                pred["boxes"].append(d.boxes.float().cpu().numpy())
                pred["scores"].append(d.scores.float().cpu().numpy())
                pred["classes"] += d.labels.cpu().tolist()
                pred["images"] += [name] * len(d.boxes)
                truth["boxes"].append(np.asarray(t.boxes, np.float32).reshape(-1, 4))
                truth["classes"] += np.asarray(t.class_ids).reshape(-1).tolist()
                truth["images"] += [name] * len(t.boxes)
    p = {"boxes": np.concatenate(pred["boxes"]).reshape(-1, 4), "scores": np.concatenate(pred["scores"]),
         "classes": np.asarray(pred["classes"], np.int64), "images": np.asarray(pred["images"], object)}
    g = {"boxes": np.concatenate(truth["boxes"]).reshape(-1, 4), "classes": np.asarray(truth["classes"], np.int64),
         "images": np.asarray(truth["images"], object)}
    return p, g


@torch.no_grad()
def validation_ap50(model: R2CNN, val_tiles: Sequence[TrainTile], num_classes: int, batch_size: int = 2) -> float:
    """AP50 (mean over classes with objects) of ``model``'s detections (score >= 0.05, no gate) on ``val_tiles``."""
    from geors.evaluate.detections import evaluate_detections

    p, g = _validation_tables(model, val_tiles, batch_size)
    ap50 = evaluate_detections(p, g, iou_thresholds=(0.5,))["overall"]["AP50"]
    return float(ap50 or 0.0)


SCORE_CANDIDATES = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""Score thresholds :func:`calibrate_score_threshold` chooses from (0.05 to 0.95)."""


@torch.no_grad()
def calibrate_score_threshold(
    model: R2CNN, val_tiles: Sequence[TrainTile], candidates: Sequence[float] = SCORE_CANDIDATES
) -> dict[str, Any]:
    """The detection score threshold with the highest F1 on the validation tiles.

    ``geors detect`` writes the boxes scoring at least the model's
    ``score_threshold`` unless ``--score-threshold`` is given. One fixed
    value does not suit every model: a detector trained with empty crops as
    negatives scores its true boxes lower, and at a fixed 0.3 it kept about
    half of the AP50 it reaches at 0.05 on held-out trees (docs/detector.md).
    Each candidate is scored by the F1 of recall and precision (IoU 0.5, over
    all classes); the highest F1 wins, ties go to the lower threshold (more
    of the objects). Without validation objects, or with F1 0 everywhere,
    nothing is calibrated and the status says so (``geors detect`` then uses
    its default, 0.3).

    Returns:
        ``{"status": "calibrated"|"default", "score_threshold" (None when not
        calibrated), "f1", "recall", "precision", "n_truth", "curve": [[t, recall, precision, f1], ...],
        "rule"}``.
    """
    from geors.evaluate.detections import evaluate_detections

    rule = "highest F1 (IoU 0.5) on the validation tiles over thresholds 0.05-0.95; ties: the lower threshold"
    p, g = _validation_tables(model, val_tiles) if val_tiles else (None, None)
    n_truth = 0 if g is None else len(g["boxes"])
    curve = []
    best: tuple[float, float, float, float] | None = None
    if n_truth:
        for t in candidates:
            o = evaluate_detections(p, g, iou_thresholds=(0.5,), score_threshold=float(t))["overall"]
            r, pr = o["recall"] or 0.0, o["precision"] or 0.0
            f1 = 2 * r * pr / (r + pr) if r + pr > 0 else 0.0
            curve.append([float(t), round(r, 4), round(pr, 4), round(f1, 4)])
            if f1 > 0 and (best is None or f1 > best[3] + 1e-12):
                best = (float(t), r, pr, f1)
    if best is None:
        log.info("score threshold not calibrated (%s): geors detect uses its default",
                 "no validation objects" if not n_truth else "no validation object was found at any threshold")
        return {"status": "default", "score_threshold": None, "f1": None, "recall": None, "precision": None,
                "n_truth": n_truth, "curve": curve, "rule": rule}
    log.info("score threshold %.2f: F1 %.3f (recall %.3f, precision %.3f) on %d validation objects",
             best[0], best[3], best[1], best[2], n_truth)
    return {"status": "calibrated", "score_threshold": best[0], "f1": best[3], "recall": best[1],
            "precision": best[2], "n_truth": n_truth, "curve": curve, "rule": rule}


@torch.no_grad()
def gate_scores(model: R2CNN, tiles: Sequence[TrainTile], batch_size: int = 4) -> np.ndarray:
    """Gate probability ``(N,)`` of each tile, as :meth:`geors.detect.Detector.gate` computes it.

    Tiles of equal shape are batched together; the result follows ``tiles``' order.
    """
    from geors.detect import trim_padding

    dev = next(model.parameters()).device
    probs = np.zeros(len(tiles), np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tiles):
        by_shape.setdefault(tuple(t.image.shape), []).append(i)
    for ids in by_shape.values():
        for start in range(0, len(ids), batch_size):
            sel = ids[start : start + batch_size]
            x = trim_padding(torch.from_numpy(np.stack([tiles[i].image for i in sel])).to(dev))
            probs[sel] = model.gate_forward(x).float().softmax(dim=1)[:, 1].cpu().numpy()
    return probs


def _kth_highest(scores: np.ndarray, target_recall: float) -> float:
    k = int(math.ceil(target_recall * len(scores) - 1e-9))
    return float(np.sort(scores)[::-1][max(k, 1) - 1])


def calibrate_gate_threshold(
    pos_scores: np.ndarray,
    empty_scores: np.ndarray,
    target_recall: float = GATE_TARGET_RECALL,
    train_pos_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Gate threshold for a target tile recall, from validation gate probabilities.

    The threshold is the ``k``-th highest probability of the validation tiles
    holding objects, ``k = ceil(target_recall * n_pos)``: the highest threshold
    that still passes at least ``target_recall`` of them (a tile passes when
    its probability is ``>=`` the threshold). With ``train_pos_scores`` the
    same rule on the training tiles with objects gives a second value and the
    lower one is kept: a validation split of a few tiles is a noisy estimate,
    and a gate must not reject the tiles it was trained on either. There is
    no cap (the previous rule capped the threshold at 0.5 or 0.95). Without
    positive validation tiles nothing can be calibrated and the gate is
    disabled (threshold 0: every tile passes).

    Args:
        pos_scores: gate probabilities of validation tiles holding objects.
        empty_scores: gate probabilities of validation tiles without objects.
        target_recall: share of positive tiles to pass, in ``(0, 1]``.
        train_pos_scores: optional gate probabilities of training tiles with objects.

    Returns:
        ``{"status": "calibrated"|"disabled", "gate_threshold", "target_recall",
        "achieved_recall", "pass_rate", "empty_pass_rate", "n_pos_tiles",
        "n_empty_tiles", "train_recall", "rule", "reason"}`` (validation
        figures; rates None where undefined).

    Raises:
        GateCalibrationError: the threshold passes fewer positive validation
            tiles than the target (guards the invariant; the rule cannot miss it).
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target recall must lie in (0, 1], got {target_recall}")
    pos = np.asarray(pos_scores, np.float64).reshape(-1)
    neg = np.asarray(empty_scores, np.float64).reshape(-1)
    tpos = None if train_pos_scores is None else np.asarray(train_pos_scores, np.float64).reshape(-1)
    rule = ("k-th highest gate probability of the validation tiles with objects, k = ceil(target_recall * n_pos)"
            + ("; the lower of that and the same rule on the training tiles with objects" if tpos is not None else ""))
    if len(pos) == 0:
        thr, status, reason = 0.0, "disabled", "no validation tile holds an object: nothing to calibrate on"
    else:
        thr, status, reason = _kth_highest(pos, target_recall), "calibrated", None
        if tpos is not None and len(tpos):
            thr = min(thr, _kth_highest(tpos, target_recall))
    both = np.concatenate([pos, neg])
    result = {
        "status": status,
        "gate_threshold": thr,
        "target_recall": float(target_recall),
        "achieved_recall": float((pos >= thr).mean()) if len(pos) else None,
        "pass_rate": float((both >= thr).mean()) if len(both) else None,
        "empty_pass_rate": float((neg >= thr).mean()) if len(neg) else None,
        "n_pos_tiles": int(len(pos)),
        "n_empty_tiles": int(len(neg)),
        "train_recall": float((tpos >= thr).mean()) if tpos is not None and len(tpos) else None,
        "rule": rule,
        "reason": reason,
    }
    if status == "calibrated" and result["achieved_recall"] < target_recall:
        raise GateCalibrationError(
            f"gate threshold {thr:.4g} passes {result['achieved_recall']:.3f} of the {len(pos)} validation tiles "
            f"with objects, below the target {target_recall}; not shipping a gate that hides objects.")
    return result


def calibrate_gate(
    model: R2CNN,
    val_tiles: Sequence[TrainTile],
    target_recall: float | None = GATE_TARGET_RECALL,
    tile_size: int = 640,
    overlap: int = 128,
    train_tiles: Sequence[TrainTile] | None = None,
) -> dict[str, Any]:
    """Calibrate ``model``'s gate threshold on validation tiles (the one path of ``geors train`` and the example).

    Images larger than a tile are cut into the inference grid first. See
    :func:`calibrate_gate_threshold` for the rule (``train_tiles`` give the
    second, training-tile bound). With ``target_recall=None``, or no
    validation tile holding an object, the gate is disabled (threshold 0) and
    a warning is logged: a model without a calibrated gate runs the detector
    on every tile rather than risk hiding objects.

    Returns:
        the dict of :func:`calibrate_gate_threshold` plus ``gate_pool`` and
        ``train_pass_rate``.
    """
    grid = grid_tiles(val_tiles, tile_size, overlap)
    has = np.array([len(t.boxes) > 0 for t in grid], bool)
    p = gate_scores(model, grid)
    tp = th = None
    if train_tiles:
        tg = grid_tiles(train_tiles, tile_size, overlap)
        tp = gate_scores(model, tg)
        th = np.array([len(t.boxes) > 0 for t in tg], bool)
    if target_recall is None:
        calib = calibrate_gate_threshold(np.zeros(0), p[~has])
        calib.update(status="disabled", reason="gate calibration turned off (gate_recall=None)", target_recall=None)
    else:
        calib = calibrate_gate_threshold(p[has], p[~has], target_recall, None if tp is None else tp[th])
    calib["gate_pool"] = model.config.gate_pool
    calib["train_pass_rate"] = float((tp >= calib["gate_threshold"]).mean()) if tp is not None and len(tp) else None
    if tp is not None and th.any():
        calib["train_recall"] = float((tp[th] >= calib["gate_threshold"]).mean())
    if calib["status"] == "disabled":
        log.warning("GATE DISABLED (threshold 0, every tile goes to the detector): %s. Give more labelled tiles "
                    "or a validation fraction > 0 to calibrate it.", calib["reason"])
    else:
        log.info("gate threshold %.4g: passes %.3f of %d validation tiles with objects (target %.3f), "
                 "%s of %d empty ones", calib["gate_threshold"], calib["achieved_recall"], calib["n_pos_tiles"],
                 target_recall, "n/a" if calib["empty_pass_rate"] is None else f"{calib['empty_pass_rate']:.3f}",
                 calib["n_empty_tiles"])
    return calib


def tiles_from_scenes(
    pairs: Sequence[tuple[str, str]],
    class_field: str | None = None,
    tile_size: int = 640,
    overlap: int = 128,
    bands: Sequence[int] | None = None,
    max_empty_ratio: float = 1.0,
    seed: int = 0,
    allow_ungeoreferenced: bool = False,
    rename: dict[str, str] | None = None,
) -> tuple[list[TrainTile], list[str], dict[str, Any]]:
    """Cut labelled scenes into training tiles.

    Every tile showing at least half of a labelled object is kept; tiles
    without objects are kept too, at most ``max_empty_ratio`` times the number
    of labelled tiles (a random, seeded choice; at least 4 when there are any),
    so memory follows the labelled area, not the scene size.

    Args:
        pairs: ``(scene path, label path)`` pairs; labels in any format
            :func:`geors.io.labels.read_labels` accepts, or None for an image
            without objects (all its tiles are empty examples).
        class_field: attribute holding the class in vector labels.
        tile_size, overlap: tile grid in pixels (as at inference).
        bands: 1-based band indexes; default as :func:`geors.open_scene`.
        max_empty_ratio: empty tiles per labelled tile.
        seed: for the choice of empty tiles (the CLI passes ``--split-seed``:
            it picks data, like the validation split, not training randomness).
        allow_ungeoreferenced: accept images without CRS (pixel labels only).
        rename: class names to rename (or merge: several old names to one new
            name) before training, e.g. ``{"Tree": "tree"}``.

    Returns:
        ``(tiles, classes, info)``: training tiles (boxes in tile pixels),
        sorted class names, and metadata (``gsd_m``, ``bands``, sources).

    Raises:
        LabelError, SceneReadError, GeoreferenceError, BandError: bad inputs.
    """
    from geors.io.labels import LabelSet, read_labels
    from geors.raster import open_scene
    from geors.tiling import TileGrid
    from geors.train.labels import tiles_with_labels

    rng = np.random.default_rng(seed)
    opened = []
    label_paths = [label_path for _, label_path in pairs]
    for scene_path, label_path in pairs:
        scene = open_scene(scene_path, bands=list(bands) if bands else None, allow_ungeoreferenced=allow_ungeoreferenced)
        if label_path is None:  # an image without objects: only empty tiles
            labels = LabelSet(boxes=np.zeros((0, 4)), class_names=(), class_ids=np.zeros(0, np.int64), classes=(),
                              source=Path(scene_path))
        else:
            labels = read_labels(label_path, scene, class_field=class_field)
        opened.append((scene, labels))
    if rename:
        found = {n for _, lab in opened for n in lab.class_names}
        unknown = sorted(set(rename) - found)
        if unknown:
            raise LabelError(f"class {', '.join(map(repr, unknown))} to rename is not in the labels (their classes: "
                             f"{', '.join(sorted(found)) or 'none'}); class names are case-sensitive.")
        opened = [(scene, replace(lab, class_names=tuple(rename.get(n, n) for n in lab.class_names)))
                  for scene, lab in opened]
    classes = sorted({n for _, lab in opened for n in lab.class_names})
    index = {c: i for i, c in enumerate(classes)}
    tiles: list[TrainTile] = []
    gsd = None
    sources = []
    for scene, labels in opened:
        remapped = np.array([index[n] for n in labels.class_names], dtype=np.int64)
        labels = type(labels)(boxes=labels.boxes, class_names=labels.class_names, class_ids=remapped,
                              classes=tuple(classes), source=labels.source)
        grid = TileGrid(scene, tile_size, overlap)
        assigned = tiles_with_labels(labels, grid, include_empty=True)
        by_id = {t.id: t for t in grid}
        pos_ids = [tid for tid, (b, _) in assigned.items() if len(b)]
        empty_ids = [tid for tid, (b, _) in assigned.items() if not len(b)]
        n_empty = min(len(empty_ids), max(int(round(max_empty_ratio * len(pos_ids))), 4))
        if not len(labels):
            n_empty = len(empty_ids)  # an image given as empty is used whole
        chosen = list(rng.choice(len(empty_ids), n_empty, replace=False)) if n_empty else []
        for tid in pos_ids + [empty_ids[i] for i in chosen]:
            b, c = assigned[tid]
            img = scene.read_tile(by_id[tid]).image
            tiles.append(TrainTile(img, np.asarray(b, np.float32), np.asarray(c, np.int64), f"{scene.name}:{tid}"))
        if gsd is None and scene.crs is not None and scene.crs.is_projected:
            try:
                gsd = float(abs(scene.transform.a) * scene.crs.linear_units_factor[1])
            except Exception:  # CRS without a linear unit factor: leave GSD unknown
                gsd = None
        given_as_empty = label_paths[len(sources)] is None
        sources.append({"scene": str(scene.path), "labels": None if given_as_empty else str(labels.source),
                        "labels_sha256": None if given_as_empty else _file_sha256(labels.source),
                        "n_boxes": len(labels), "n_tiles_with_objects": len(pos_ids), "n_empty_tiles_used": n_empty})
        log.info("%s: %d boxes in %d tiles, %d empty tiles used", scene.name, len(labels), len(pos_ids), n_empty)
    info = {"gsd_m": gsd, "tile_size": tile_size, "overlap": overlap,
            "band_indexes": list(bands) if bands else None, "sources": sources}
    return tiles, classes, info


def _file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a label file (a GeoPackage, shapefile, VOC XML or CSV), so a model's provenance can be checked on
    another machine, where the recorded path means nothing; None when it is not a readable file."""
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
