"""Training loop of the R2-CNN gate + detector from labelled tiles.

Input is a list of :class:`TrainTile` (image ``(C, H, W)`` float32 in ``[0, 1]``,
boxes ``(N, 4)`` xyxy tile pixels, class ids). Each step draws a batch of
random crops, half of them around a labelled object ("positive") and half
without any object ("empty") when empty examples exist, applies a random
flip/90° rotation, and minimises the joint R2-CNN loss (gate loss on every
crop, detector loss only on crops with targets). With the cheap gate
(``gate_input_scale > 1``, the default of :class:`TrainConfig`) the gate loss
is computed on the crops average-pooled by that factor and the detector loss on
the full-resolution crops. After training, :func:`calibrate_gate_threshold`
sets the gate threshold from positive training tiles. CPU works for small runs;
on CUDA the forward pass runs under mixed precision. Everything is seeded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geors.errors import LabelError
from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.train.anchors import box_sizes, kmeans_anchor_scales
from geors.train.augment import random_contrast, random_dihedral, random_photometric

__all__ = ["TrainTile", "TrainConfig", "train_detector", "sample_batch", "calibrate_gate_threshold"]

log = logging.getLogger(__name__)

MIN_VISIBLE = 0.5
"""A box cut by a crop is kept if at least this share of its area stays visible."""


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
        paste_fraction: share of positive crops pasted onto crops of images
            without objects (see :func:`sample_batch`; 0 = off).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay.
        assigner: ``"nwd_rka"`` (default) or ``"iou"`` for the RPN.
        num_anchor_scales: k of the anchor k-means.
        anchor_scales: fixed anchor sides; None = k-means over training boxes.
        nwd_c: NWD constant in pixels. geors keeps the paper's 12.7 rather than
            the mean object size: the constant sets the radius of the ignored
            zone around objects (NWD >= 0.3 means W2 <= 1.2 C), and with the
            ~35 px NEON crowns and dense canopy a mean-size C would ignore
            almost every anchor between trees, starving the RPN of negatives.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds numpy and torch.
        max_seconds: optional wall-clock budget; training stops early at it.
        log_every: steps between log lines.
        gate_input_scale: the gate reads crops/tiles average-pooled by this
            factor (4 = cheap gate, default for new models; 1 = the paper's
            gate on the shared full-resolution map).
        init_from: optional model file to start from (fine-tuning); its
            anchor scales and architecture arguments are kept, except
            ``gate_input_scale`` and ``arch`` overrides.
        gate_recall: share of positive training tiles the calibrated gate
            threshold keeps (see :func:`calibrate_gate_threshold`); None keeps 0.5.
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
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    assigner: str = "nwd_rka"
    num_anchor_scales: int = 6
    anchor_scales: list[float] | None = None
    nwd_c: float = 12.7
    device: str = "auto"
    seed: int = 0
    max_seconds: float | None = None
    log_every: int = 20
    gate_input_scale: int = 4
    init_from: str | None = None
    gate_recall: float | None = 0.99
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
        if side != crop_size:
            f = crop_size / side
            img = F.interpolate(torch.from_numpy(img)[None], size=(crop_size, crop_size), mode="bilinear",
                                align_corners=False)[0].numpy()
            bx = bx * f
        imgs.append(img)
        boxes.append(bx.astype(np.float32))
        cids.append(ci)
    return np.stack(imgs), boxes, cids


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
) -> tuple[R2CNN, dict[str, Any]]:
    """Train an R2-CNN gate + detector from scratch (or from ``config.init_from``).

    Args:
        tiles: labelled training images, see :class:`TrainTile`.
        classes: class names; ``class_ids`` index into it.
        config: training options.
        meta: extra model metadata (``tile_size``, ``overlap``, ``gsd_m``,
            ``normalisation``, ``training``...), merged into the result.

    Returns:
        ``(model, meta)``: the trained model in eval mode on CPU, and metadata
        ready for :func:`geors.models.registry.save_model`.

    Raises:
        LabelError: no labelled object, or class ids outside ``classes``.
    """
    from geors.detect import resolve_device

    cfg = config or TrainConfig()
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

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    init_meta: dict[str, Any] | None = None
    if cfg.init_from:
        from geors.models.registry import load_model

        init_model, init_meta = load_model(cfg.init_from, torch.device("cpu"))
        if list(init_meta["classes"]) != list(classes) or int(init_meta["bands"]) != n_bands:
            raise LabelError(f"init_from {cfg.init_from}: classes {init_meta['classes']} / {init_meta['bands']} bands "
                             f"do not match the training data ({list(classes)} / {n_bands} bands).")
        arch_args = {**init_model.config.to_dict(), **cfg.arch, "gate_input_scale": int(cfg.gate_input_scale)}
        arch = R2CNNConfig.from_dict(arch_args)
        scales = list(arch.anchor_scales)
        model = R2CNN(arch)
        model.load_state_dict(init_model.state_dict())
        model = model.to(device)
    else:
        scales = cfg.anchor_scales or kmeans_anchor_scales(all_boxes, cfg.num_anchor_scales)
        arch = R2CNNConfig(
            num_classes=len(classes), in_channels=n_bands, anchor_scales=list(scales), assigner=cfg.assigner,
            nwd_c=cfg.nwd_c, **{"gate_input_scale": int(cfg.gate_input_scale), **cfg.arch},
        )
        model = R2CNN(arch).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_pos_tiles = sum(1 for t in tiles if len(t.boxes))
    spe = cfg.steps_per_epoch or max(1, int(math.ceil(len(all_boxes) / max(cfg.batch_size, 1) / 8)))
    total = max(cfg.epochs * spe, 1)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    log.info("training R2-CNN on %d images (%d with objects, %d boxes), %d steps of %d crops of %d px on %s; "
             "anchor scales %s; assigner %s", len(tiles), n_pos_tiles, len(all_boxes), total, cfg.batch_size,
             cfg.crop_size, device, [round(s, 1) for s in scales], cfg.assigner)

    t0 = time.monotonic()
    running: dict[str, float] = {}
    history: list[float] = []
    step = 0
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, total, cfg.warmup_steps)
        imgs, bxs, cids = sample_batch(tiles, cfg.batch_size, cfg.crop_size, rng, cfg.pos_fraction, cfg.scales,
                                      cfg.color_jitter, cfg.paste_fraction, cfg.contrast_jitter)
        x = torch.from_numpy(imgs).to(device)
        targets = [
            {"boxes": torch.from_numpy(b).to(device), "labels": torch.from_numpy(c).to(device)}
            for b, c in zip(bxs, cids, strict=True)
        ]
        with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=use_amp):
            losses = model.compute_losses(x, targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(opt)
        scaler.update()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        history.append(float(losses["total"].detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            n = (step % cfg.log_every) + 1
            log.info("step %d/%d %s (%.0f s)", step + 1, total,
                     " ".join(f"{k}={v / n:.3f}" for k, v in running.items()), time.monotonic() - t0)
            running = {}
        if cfg.max_seconds is not None and time.monotonic() - t0 > cfg.max_seconds:
            log.warning("stopping after %d of %d steps: time budget of %.0f s reached", step + 1, total, cfg.max_seconds)
            break
    seconds = time.monotonic() - t0
    model.eval().cpu()
    gate_threshold, calib = 0.5, None
    if cfg.gate_recall is not None:
        calib = calibrate_gate_threshold(model, tiles, recall=cfg.gate_recall,
                                         tile_size=int((meta or {}).get("tile_size", 640)),
                                         overlap=int((meta or {}).get("overlap", 128)))
        gate_threshold = calib["gate_threshold"]

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
        "anchor_scales": list(scales),
        "nwd_c": arch.nwd_c,
        "training": {
            "n_images": len(tiles),
            "n_images_with_objects": n_pos_tiles,
            "n_boxes": int(len(all_boxes)),
            "per_class": {c: int((all_ids == i).sum()) for i, c in enumerate(classes)},
            "box_size_px": {"mean": float(sizes.mean()), "min": float(sizes.min()), "max": float(sizes.max())},
            "steps": step + 1,
            "seconds": round(seconds, 1),
            "device": str(device),
            "initial_loss": float(np.mean(history[:10])) if history else None,
            "final_loss": float(np.mean(history[-10:])) if history else None,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "gate_input_scale": int(arch.gate_input_scale),
            "gate_calibration": calib,
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


def _tile_crops(tiles: Sequence[TrainTile], tile_size: int, overlap: int) -> tuple[list[np.ndarray], list[bool]]:
    """Inference-grid windows (``tile_size``, stride ``tile_size - overlap``, zero-padded) of every image,
    with whether each holds a labelled object (kept by the crop rule of :func:`sample_batch`)."""
    stride = max(tile_size - overlap, 1)
    crops, has = [], []
    for t in tiles:
        _, h, w = t.image.shape
        ys = list(range(0, max(h - tile_size, 0) + 1, stride))
        xs = list(range(0, max(w - tile_size, 0) + 1, stride))
        if ys[-1] + tile_size < h:
            ys.append(h - tile_size)
        if xs[-1] + tile_size < w:
            xs.append(w - tile_size)
        for y0 in ys:
            for x0 in xs:
                img, bx, _ = _crop(t, x0, y0, tile_size)
                crops.append(img)
                has.append(len(bx) > 0)
    return crops, has


@torch.no_grad()
def calibrate_gate_threshold(
    model: R2CNN,
    tiles: Sequence[TrainTile],
    recall: float = 0.99,
    tile_size: int = 640,
    overlap: int = 128,
    max_threshold: float = 0.5,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Gate threshold that keeps at least ``recall`` of the positive training tiles.

    The training images are cut into the inference tile grid (zero-padded at
    the edges); the threshold is the largest value ``t <= max_threshold`` such
    that at least ``ceil(recall * n_pos)`` tiles holding an object have gate
    probability ``>= t``, i.e. the ``k``-th highest positive probability with
    ``k = ceil(recall * n_pos)``, capped at ``max_threshold``.

    Args:
        model: trained model (eval mode, on CPU or its device).
        tiles: the training images.
        recall: share of positive tiles to keep, in ``(0, 1]``.
        tile_size, overlap: the inference grid in pixels.
        max_threshold: upper bound of the threshold.
        batch_size: tiles per forward pass.

    Returns:
        ``{"gate_threshold", "rule", "n_pos_tiles", "n_empty_tiles", "pos_kept", "empty_rejected"}``
        (shares at the returned threshold; ``empty_rejected`` is None without empty tiles).
    """
    if not 0 < recall <= 1:
        raise ValueError(f"recall must lie in (0, 1], got {recall}")
    crops, has = _tile_crops(tiles, tile_size, overlap)
    dev = next(model.parameters()).device
    probs = []
    for i in range(0, len(crops), batch_size):
        x = torch.from_numpy(np.stack(crops[i : i + batch_size])).to(dev)
        probs.append(model.gate_forward(x).float().softmax(dim=1)[:, 1].cpu().numpy())
    p = np.concatenate(probs) if probs else np.zeros(0, np.float32)
    hv = np.asarray(has, bool)
    pos, neg = p[hv], p[~hv]
    if len(pos):
        k = int(math.ceil(recall * len(pos)))
        thr = float(min(np.sort(pos)[::-1][k - 1], max_threshold))
    else:
        thr = max_threshold
    return {
        "gate_threshold": thr,
        "rule": f"k-th highest gate probability of the positive {tile_size} px training tiles, "
                f"k = ceil({recall} * n_pos), capped at {max_threshold}",
        "n_pos_tiles": int(len(pos)), "n_empty_tiles": int(len(neg)),
        "pos_kept": float((pos >= thr).mean()) if len(pos) else None,
        "empty_rejected": float((neg < thr).mean()) if len(neg) else None,
    }


def tiles_from_scenes(
    pairs: Sequence[tuple[str, str]],
    class_field: str | None = None,
    tile_size: int = 640,
    overlap: int = 128,
    bands: Sequence[int] | None = None,
    max_empty_ratio: float = 1.0,
    seed: int = 0,
    allow_ungeoreferenced: bool = False,
) -> tuple[list[TrainTile], list[str], dict[str, Any]]:
    """Cut labelled scenes into training tiles.

    Every tile showing at least half of a labelled object is kept; tiles
    without objects are kept too, at most ``max_empty_ratio`` times the number
    of labelled tiles (a random, seeded choice; at least 4 when there are any),
    so memory follows the labelled area, not the scene size.

    Args:
        pairs: ``(scene path, label path)`` pairs; labels in any format
            :func:`geors.io.labels.read_labels` accepts.
        class_field: attribute holding the class in vector labels.
        tile_size, overlap: tile grid in pixels (as at inference).
        bands: 1-based band indexes; default as :func:`geors.open_scene`.
        max_empty_ratio: empty tiles per labelled tile.
        seed: for the choice of empty tiles.
        allow_ungeoreferenced: accept images without CRS (pixel labels only).

    Returns:
        ``(tiles, classes, info)``: training tiles (boxes in tile pixels),
        sorted class names, and metadata (``gsd_m``, ``bands``, sources).

    Raises:
        LabelError, SceneReadError, GeoreferenceError, BandError: bad inputs.
    """
    from geors.io.labels import read_labels
    from geors.raster import open_scene
    from geors.tiling import TileGrid
    from geors.train.labels import tiles_with_labels

    rng = np.random.default_rng(seed)
    opened = []
    for scene_path, label_path in pairs:
        scene = open_scene(scene_path, bands=list(bands) if bands else None, allow_ungeoreferenced=allow_ungeoreferenced)
        labels = read_labels(label_path, scene, class_field=class_field)
        opened.append((scene, labels))
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
        sources.append({"scene": str(scene.path), "labels": str(labels.source), "n_boxes": len(labels),
                        "n_tiles_with_objects": len(pos_ids), "n_empty_tiles_used": n_empty})
        log.info("%s: %d boxes in %d tiles, %d empty tiles used", scene.name, len(labels), len(pos_ids), n_empty)
    info = {"gsd_m": gsd, "tile_size": tile_size, "overlap": overlap,
            "band_indexes": list(bands) if bands else None, "sources": sources}
    return tiles, classes, info
