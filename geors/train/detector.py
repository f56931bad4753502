"""Training loop of the R2-CNN gate + detector (its options: :class:`geors.train.detector_config.TrainConfig`).

Input is a list of :class:`~geors.train.crops.TrainTile` (image ``(C, H, W)``
float32 in ``[0, 1]``, boxes ``(N, 4)`` xyxy pixels, class ids). Each step
draws a batch of random crops (:func:`~geors.train.crops.sample_batch`: half
around a labelled object, half without any when empty examples exist, flips,
90° rotations, colour jitter) and minimises the joint R2-CNN loss (gate loss
on every crop, detector loss only on crops with targets unless
``empty_negatives``). With the cheap gate (``gate_input_scale > 1``) the gate
loss is computed on the crops average-pooled by that factor.

The time budget is the schedule (:mod:`geors.train.schedule`): the step time
is measured on the first steps and the number of steps planned so that
training, validation and calibration fill ``max_seconds``; the learning rate
warms up and then follows a cosine over the planned steps. Validation always
exists unless switched off: :func:`~geors.train.crops.split_validation` holds
back spatial blocks (whole tiles, or blocks inside a single small scene) for
the validation AP50 (early stopping keeps the best weights), the gate
threshold (:func:`~geors.train.calibrate.calibrate_gate`, disabled with too
little evidence) and the score threshold (best F1,
:func:`~geors.train.calibrate.calibrate_score_threshold`). CPU works; on
CUDA the forward pass runs under mixed precision. Everything is seeded.

The names of :mod:`geors.train.crops`, :mod:`geors.train.calibrate` and
:func:`geors.train.scene_tiles.tiles_from_scenes` are importable from here too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geors.errors import ConfigError, LabelError
from geors.models.r2cnn import INFERENCE_FIELDS, R2CNN, R2CNNConfig
from geors.progress import Progress
from geors.train.anchors import box_sizes, kmeans_anchor_scales
from geors.train.calibrate import (
    GATE_TARGET_RECALL,
    SCORE_CANDIDATES,
    GateCalibrationError,
    calibrate_gate,
    calibrate_gate_threshold,
    calibrate_score_threshold,
    gate_scores,
    monitor_subset,
    validation_ap50,
    validation_summary,
)
from geors.train.crops import (
    MIN_VISIBLE,
    TrainTile,
    count_objects,
    grid_tiles,
    require_enough_labels,
    sample_batch,
    split_validation,
)
from geors.train.detector_config import DEFAULT_STEPS, TrainConfig
from geors.train.scene_tiles import tiles_from_scenes
from geors.train.schedule import BudgetSchedule

__all__ = [
    "DEFAULT_STEPS", "MIN_LABELLED_OBJECTS", "GATE_TARGET_RECALL", "SCORE_CANDIDATES", "MIN_VISIBLE",
    "GateCalibrationError", "TrainTile", "TrainConfig", "train_detector", "sample_batch", "grid_tiles",
    "split_validation", "gate_scores", "calibrate_gate", "calibrate_gate_threshold", "calibrate_score_threshold",
    "tiles_from_scenes", "validation_ap50",
]

log = logging.getLogger(__name__)

MIN_LABELLED_OBJECTS = 10
"""With a validation split, fewer labelled objects than this are refused: too few to train on and to hold some
back for the calibration."""

VALIDATION_SHARE = 0.25
"""At most about this share of a time budget goes to validations: when one takes longer, there are fewer (two at
least: one in the middle, one at the end)."""

_clock = time.monotonic  # the schedule's clock (tests replace it)


def train_detector(
    tiles: Sequence[TrainTile],
    classes: Sequence[str],
    config: TrainConfig | None = None,
    meta: dict[str, Any] | None = None,
    val_tiles: Sequence[TrainTile] | None = None,
    progress: Progress | None = None,
) -> tuple[R2CNN, dict[str, Any]]:
    """Train an R2-CNN gate + detector from scratch (or from ``config.init_from``).

    Args:
        tiles: labelled training images, see :class:`TrainTile`.
        classes: class names; ``class_ids`` index into it.
        config: training options.
        meta: extra model metadata (``tile_size``, ``overlap``, ``gsd_m``,
            ``normalisation``, ``training``...), merged into the result.
        val_tiles: validation images; None = hold back ``config.val_fraction``
            of the objects in spatial blocks of ``tiles``
            (:func:`geors.train.crops.split_validation`).
        progress: reporter of the steps (:class:`geors.progress.Progress`;
            :class:`geors.train.schedule.TrainingBar` follows a changing plan);
            its ``cancelled`` stops training like the budget does.

    Returns:
        ``(model, meta)``: the trained model in eval mode on CPU, and metadata
        ready for :func:`geors.models.registry.save_model`. ``meta["gate_threshold"]``
        is the calibrated threshold (0 when the gate is disabled) and
        ``meta["training"]["gate_calibration"]`` records target, achieved
        recall, pass rates and status. ``meta["training"]`` also records the
        schedule, the validation AP50 of each validation and of the kept
        weights (``validation_AP50``) and their F1 at the calibrated score
        threshold (``validation_F1``).

    Raises:
        LabelError: no labelled object, class ids outside ``classes``, or (with
            a validation split) fewer than :data:`MIN_LABELLED_OBJECTS` objects.
        GateCalibrationError: the calibrated gate misses its recall target.
    """
    from geors.device import resolve_device

    cfg = config or TrainConfig()
    given_val = val_tiles is not None
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
        if cfg.val_fraction > 0:
            require_enough_labels(tiles, val_tiles, MIN_LABELLED_OBJECTS)
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
    if not 0.0 <= cfg.hard_negative_fraction <= 1.0:
        raise ConfigError(f"hard_negative_fraction must be in [0, 1], got {cfg.hard_negative_fraction!r}")
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
    sched, spe = _make_schedule(cfg)
    # Steps trained as the paper before empty crops join the detector loss (0 without empty negatives; at most
    # total - 1, so that a short run still trains its last step, and validates its last weights, with them).
    # Weights validated in the warm-up are not the training asked for: never kept, and early stopping
    # waits for the first validation after it. It follows the plan when the plan changes.
    def warm_up_end() -> int:
        return min(int(round(cfg.empty_negatives_from * sched.total)), sched.total - 1) if empty_negatives else 0

    if warm_up_end() > 0:
        log.info("empty crops join the detector loss from step %d of %d; weights validated before that are "
                 "not kept", warm_up_end() + 1, sched.total)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    n_train_boxes, n_val_boxes = count_objects(tiles), count_objects(val_tiles)
    log.info("training R2-CNN on %d images (%d with objects, %d boxes), validation %d images (%d with objects, "
             "%d boxes); %s; batches of %d crops of %d px on %s; anchor scales %s; assigner %s; gate pool %s",
             len(tiles), n_pos_tiles, n_train_boxes, len(val_tiles), len(val_pos), n_val_boxes,
             _describe_schedule(cfg, sched, spe), cfg.batch_size, cfg.crop_size, device,
             [round(s, 1) for s in scales], cfg.assigner, arch.gate_pool)

    running: dict[str, float] = {}
    history: list[float] = []
    val_history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    monitor = monitor_subset(val_tiles, cfg.split_seed)
    val_px = sum(t.image.shape[1] * t.image.shape[2] for t in val_tiles)
    monitor_px = sum(t.image.shape[1] * t.image.shape[2] for t in monitor)
    val_seconds: list[float] = []
    stop_reason = ""
    n_validations = max(cfg.validations, 1)  # lowered when validating would take more than its share of the budget
    quiet = progress is not None
    started = False  # the reporter starts once the plan is known (a fixed plan at once, a budget after the probe)
    sched.start()
    step = 0
    if cfg.init_from and val_pos and not gate_only:
        # The starting weights are a candidate too: a fine-tune on few objects (e.g. one round of an analyst's
        # corrections) can validate worse than the model it started from; then that model is kept, with
        # thresholds calibrated on this validation, and the log and the model's training record say so.
        with sched.side_work():
            t_val = time.perf_counter()
            model.eval()
            ap50 = validation_ap50(model, monitor, len(classes))
            _train_mode(model, gate_only)
            val_seconds.append(time.perf_counter() - t_val)
        val_history.append({"step": 0, "val_AP50": ap50, "selectable": True, "starting_weights": True})
        best = (ap50, 0, {k: v.detach().clone() for k, v in model.state_dict().items()})
        log.info("step 0: validation AP50 %.3f of the starting weights (%s)", ap50, Path(cfg.init_from).name)
    while not sched.finished(step):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * sched.lr_factor(step)
        imgs, bxs, cids = sample_batch(tiles, cfg.batch_size, cfg.crop_size, rng, cfg.pos_fraction, cfg.scales,
                                      cfg.color_jitter, cfg.paste_fraction, cfg.contrast_jitter, cfg.saturation_jitter,
                                      cfg.hard_negative_fraction)
        x = torch.from_numpy(imgs).to(device)
        targets = [
            {"boxes": torch.from_numpy(b).to(device), "labels": torch.from_numpy(c).to(device)}
            for b, c in zip(bxs, cids, strict=True)
        ]
        model.config.empty_negatives = empty_negatives and step >= warm_up_end()
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
        step += 1
        sched.step_done(step)
        if not val_seconds and val_pos and sched.step_s() is not None:
            # before the first validation is timed: a forward pass over the validation pixels costs about a
            # third of a training step over as many pixels
            est = sched.step_s() * monitor_px / (3.0 * cfg.batch_size * cfg.crop_size ** 2)
            sched.set_reserve(est * (_validations_left(n_validations, sched, spe, step, 0) + 1.2 * val_px / monitor_px))
        if progress is not None and not started and (sched.fixed or sched.plans):
            progress.start(sched.total, "training")
            started = True
            if step > 1:
                progress.advance(step - 1)
        if started:
            progress.advance(1, steps=sched.total, loss=history[-1], eta_s=round(sched.eta_s(step), 1))
        if step % cfg.log_every == 0 or sched.finished(step):
            n = (step - 1) % cfg.log_every + 1
            log.log(logging.DEBUG if quiet else logging.INFO, "step %d/%d %s | %.0f s, ETA %.0f s", step, sched.total,
                    " ".join(f"{k}={v / n:.3f}" for k, v in running.items()), sched.elapsed_s(), sched.eta_s(step))
            running = {}
        cancelled = progress is not None and bool(getattr(progress, "cancelled", False))
        ending = sched.finished(step) or cancelled
        last_val = val_history[-1]["step"] if val_history else 0
        if val_pos and (_validation_due(n_validations, sched, spe, step, len(val_history), last_val) or ending):
            with sched.side_work():
                t_val = time.perf_counter()
                scored = model if ema is None else ema
                scored.eval()
                ap50 = validation_ap50(scored, monitor, len(classes))
                _train_mode(model, gate_only)
                val_seconds.append(time.perf_counter() - t_val)
            selectable = step > warm_up_end()
            val_history.append({"step": step, "val_AP50": ap50, "selectable": selectable,
                                **({"epoch": round(step / spe, 2)} if spe else {})})
            improved = selectable and (best is None or ap50 > best[0])
            if selectable and (best is None or ap50 >= best[0]):  # ties: the later, longer-trained weights
                best = (ap50, step, {k: v.detach().clone() for k, v in scored.state_dict().items()})
            if not selectable:
                note = f" (warm-up: not kept, empty crops join at step {warm_up_end() + 1})"
            else:
                note = " best so far" if improved else f", best {best[0]:.3f} at step {best[1]}"
            log.info("step %d/%d: validation AP50 %.3f (%d images)%s", step, sched.total, ap50, len(monitor), note)
            if started:
                progress.advance(0, steps=sched.total, val_AP50=ap50, best=best[0] if best else None)
            mean_val = float(np.mean(val_seconds))
            if cfg.max_seconds is not None and not spe:
                n_validations = max(len(val_history) + 1, 2, min(n_validations, int(VALIDATION_SHARE * cfg.max_seconds
                                                                                    / max(mean_val, 1e-6))))
            # still to come: the validations left, then the calibration, one pass over all held-back images (+20%
            # for the gate's)
            sched.set_reserve(mean_val * (_validations_left(n_validations, sched, spe, step, len(val_history))
                                          + 1.2 * val_px / monitor_px))
            kept = [v for v in val_history if v["selectable"]]
            if (cfg.patience is not None and selectable and not improved and not ending
                    and len(kept) - 1 - _index_of_best(kept) >= cfg.patience):
                stop_reason = f"early stop: no better validation AP50 for {cfg.patience} validations"
                log.info("%s", stop_reason)
                break
        if cancelled:
            stop_reason = f"cancelled after {step} of {sched.total} planned steps"
            log.warning("stopping: %s", stop_reason)
            break
    if not stop_reason:
        stop_reason = sched.stop_reason(step)
        if sched.out_of_time() and step < sched.total:
            if step <= warm_up_end():
                stop_reason += f", before the empty crops joined (step {warm_up_end() + 1}): the model has not seen them"
            # a plan is an estimate: a step or two short is the budget used as planned, a cut schedule is not
            log.log(logging.WARNING if step < 0.95 * sched.total else logging.INFO, "stopping: %s", stop_reason)
    if progress is not None:
        progress.close()
    seconds = sched.elapsed_s()
    model.config.empty_negatives = empty_negatives  # the model records how it was configured, not the last step
    if best is not None and best[1] == 0 and step > 0:
        model.load_state_dict(best[2])
        log.warning("no fine-tuned weights validated better than the starting weights (%s, validation AP50 %.3f): "
                    "the model keeps them and their thresholds. More objects, more minutes or --lr may help.", Path(cfg.init_from).name, best[0])
    elif best is not None and (best[1] != step or ema is not None):
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
    kept_start = bool(best is not None and best[1] == 0 and step > 0)
    if kept_start and init_meta is not None:
        # the starting model unchanged: its own thresholds stay (calibrated on its own validation), so the
        # model written detects exactly as the one it started from
        kept = "the starting model's (its weights were kept)"
        same_gate = (init_model.config.gate_pool == arch.gate_pool
                     and int(init_model.config.gate_input_scale) == int(arch.gate_input_scale))
        if same_gate and init_meta.get("gate_threshold") is not None:
            calib = {**calib, "status": "calibrated", "gate_threshold": float(init_meta["gate_threshold"]),
                     "source": kept}
            gate_threshold = calib["gate_threshold"]
        if init_meta.get("score_threshold") is not None:
            t0 = float(init_meta["score_threshold"])
            row = next((r for r in score_calib.get("curve", []) if abs(r[0] - t0) < 1e-6), None)
            score_calib = {**score_calib, "status": "calibrated", "score_threshold": t0, "source": kept,
                           **({"recall": row[1], "precision": row[2], "f1": row[3]} if row else {})}
    val_summary = validation_summary(val_tiles, score_calib, calib)
    log.info("%s", val_summary["line"])

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
            "n_validation_boxes": n_val_boxes,
            "validation_split": ("spatial blocks held back (split_validation)" if cfg.val_fraction > 0 else "none")
            if not given_val else "given",
            "steps": step,
            "planned_steps": sched.total,
            "schedule": sched.summary(step),
            "best_step": best[1] if best is not None else step,
            "kept_starting_weights": kept_start,
            "best_val_AP50": float(best[0]) if best is not None else None,
            "stop_reason": stop_reason,
            "train_only": cfg.train_only,
            "validation": val_history,
            "seconds": round(seconds, 1),
            "device": str(device),
            "initial_loss": float(np.mean(history[:10])) if history else None,
            "final_loss": float(np.mean(history[-10:])) if history else None,
            "config": cfg.to_dict(),
            "validation_AP50": val_summary["AP50"],
            "validation_F1": val_summary["F1"],
            "validation_summary": val_summary["line"],
            "gate_note": val_summary["gate_note"],
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



def _make_schedule(cfg: TrainConfig) -> tuple[BudgetSchedule, int | None]:
    """The run's schedule and, for the epoch form, its steps per epoch (else None)."""
    if cfg.max_seconds is not None and cfg.max_seconds <= 0:
        raise ConfigError(f"max_seconds must be positive or None (no budget), got {cfg.max_seconds}")
    spe = None
    if cfg.epochs is not None or cfg.steps_per_epoch is not None:
        epochs = cfg.epochs or 10
        if epochs < 1 or (cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1):
            raise ConfigError("epochs and steps_per_epoch must be >= 1")
        spe = cfg.steps_per_epoch or max(1, math.ceil(DEFAULT_STEPS / epochs))
        fixed: int | None = epochs * spe
    elif cfg.steps is not None:
        fixed = cfg.steps
    else:
        fixed = None if cfg.max_seconds is not None else DEFAULT_STEPS
    if fixed is not None and fixed < 1:
        raise ConfigError(f"steps must be >= 1, got {fixed}")
    return BudgetSchedule(cfg.max_seconds, fixed, warmup_steps=cfg.warmup_steps, clock=_clock), spe


def _describe_schedule(cfg: TrainConfig, sched: BudgetSchedule, spe: int | None) -> str:
    if not sched.fixed:
        return (f"steps planned for a budget of {cfg.max_seconds / 60:.1f} min (step time measured on the first "
                f"{sched.probe_steps} steps), {cfg.validations} validations")
    form = f"{sched.total // spe} epochs x {spe} steps" if spe else f"{sched.total} steps"
    return form + (f", capped at {cfg.max_seconds / 60:.1f} min" if cfg.max_seconds is not None else "")


def _validation_due(n_validations: int, sched: BudgetSchedule, spe: int | None, step: int, n_done: int,
                    last_step: int) -> bool:
    """After every epoch in the epoch form; otherwise ``n_validations`` times, evenly over the current plan."""
    if spe:
        return step % spe == 0
    every = sched.total / max(n_validations, 1)
    return step >= math.ceil((n_done + 1) * every) and step - last_step >= every / 2  # a shrinking plan: no bursts


def _validations_left(n_validations: int, sched: BudgetSchedule, spe: int | None, step: int, n_done: int) -> int:
    if spe:
        return math.ceil(max(sched.total - step, 0) / spe)
    return max(n_validations - n_done, 1)


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

