"""Training of the C2FNet segmenter: the configuration, the two phases, the time budget and validation.

Data (labelled windows, what unlabelled pixels mean, validation blocks,
crops) is :mod:`geors.train.seg_data`; label readers are
:mod:`geors.io.seg_labels`.

Schedule (the paper's): the coarse network is trained first (cross-entropy,
255 ignored), then frozen; the fine binary network is trained on windows
selected from the frozen coarse prediction (the window statistic, top-n,
stride 32) with target 1 on small-class pixels. geors adds one window centred
on a random ground-truth small-object pixel per crop when there is one
(``fine_gt_windows``), so the fine net sees objects the young coarse net
misses entirely; with a well-trained coarse net the selected windows hold
them anyway.

A phase with nothing to learn does not run: the coarse phase needs labelled
pixels of two classes at least (otherwise training is refused: the model
would paint everything with the one class), the fine phase needs pixels of a
small class and of another class. The skipped phase's budget goes to the
other.

Time budget (``max_seconds``): the coarse phase gets its share
(``coarse_steps / (coarse_steps + fine_steps)``, all of it when the fine phase
is skipped), the fine phase whatever is left. Each phase measures its step time
(and the cost of a validation pass) over its first steps and plans its number
of steps so that the budget is used; the learning-rate schedule (linear
warm-up, cosine decay) runs over the planned steps. Without a budget the step
counts are used as given.

Validation: spatial blocks of the labelled windows are held back
(:func:`geors.train.seg_data.split_validation`). Each phase is validated
``val_evals`` times (the coarse phase with the coarse network alone, the fine
phase with C2FNet as it runs at inference), keeps the weights of its best
validation mIoU (the later ones on a tie) and stops early only when validation
has not improved for ``patience`` evaluations, in the second half of its
planned steps. When C2FNet validates worse than its coarse network alone
(a fine network too young for the windows it flips), or when the fine phase
did not run, the model is saved with ``top_n = 0``: it refines no window.
The final per-class validation IoU is in the model metadata
(``training.validation``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geors.errors import ConfigError, LabelError
from geors.io.seg_labels import IGNORE, LabelSource, is_raster_path, open_label_source
from geors.models.c2fnet import C2FNet, C2FNetConfig, crop_windows, select_windows
from geors.train.seg_data import CropSampler, SegTile, label_pixels, load_training_tiles, split_validation

__all__ = [
    "SegTile",
    "SegTrainConfig",
    "LabelSource",
    "open_label_source",
    "load_training_tiles",
    "train_segmenter",
    "phases_to_learn",
    "DEFAULT_COLOURS",
    "default_colours",
    "is_raster_path",
]

log = logging.getLogger(__name__)

DEFAULT_COLOURS = [
    (0, 0, 0), (34, 139, 34), (230, 25, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
]


def default_colours(n: int) -> list[list[int]]:
    """``n`` RGB colours for class ids 0..n-1 (a fixed palette, then a deterministic spread)."""
    out = [list(c) for c in DEFAULT_COLOURS[:n]]
    rng = np.random.default_rng(7)
    while len(out) < n:
        out.append([int(v) for v in rng.integers(0, 256, 3)])
    return out


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SegTrainConfig:
    """Options of :func:`train_segmenter` (sizes in pixels); dict and TOML round-trip with type checks.

    Attributes:
        coarse_steps, fine_steps: optimiser steps of each phase without a time budget; with one, their
            ratio splits the budget between the phases.
        batch_size: crops per step.
        crop_size: side of the training crops.
        small_fraction: share of crops centred on a small-object pixel.
        lr, weight_decay, warmup_steps: AdamW, linear warm-up, cosine decay.
        fine_windows: top-n windows per crop in fine training (selected from the frozen coarse prediction).
        fine_gt_windows: extra windows per crop centred on a ground-truth small-object pixel.
        color_jitter: per-band gain / gamma jitter strength.
        max_seconds: wall-clock budget for both phases; the step counts are planned from the measured step
            time so that it is used (None: the step counts as given).
        val_fraction: share of the labelled pixels held back in spatial blocks for validation (0: none).
        val_block: side of the validation blocks.
        val_evals: validation passes per phase.
        patience: evaluations without improvement before a phase stops early (0: never).
        device, seed, log_every: as for the detector.
        arch: :class:`C2FNetConfig` fields (variant, window, window_stride, top_n, zoom, aggregation...).
    """

    coarse_steps: int = 600
    fine_steps: int = 400
    batch_size: int = 4
    crop_size: int = 256
    small_fraction: float = 0.5
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    fine_windows: int = 2
    fine_gt_windows: int = 1
    color_jitter: float = 0.1
    max_seconds: float | None = None
    val_fraction: float = 0.15
    val_block: int = 128
    val_evals: int = 8
    patience: int = 4
    device: str = "auto"
    seed: int = 0
    log_every: int = 20
    arch: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        hints = typing.get_type_hints(SegTrainConfig)
        for f in dataclasses.fields(self):
            v, t = getattr(self, f.name), hints[f.name]
            optional = type(None) in typing.get_args(t)
            base = next((a for a in typing.get_args(t) if a is not type(None)), t) if optional else t
            base = typing.get_origin(base) or base
            if v is None and optional:
                continue
            if base is float and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
                continue
            if isinstance(v, bool) or not isinstance(v, base):
                raise ConfigError(f"segmenter training option {f.name} must be {base.__name__}"
                                  f"{' or absent' if optional else ''}, got {v!r}")
        arch_fields = {f.name for f in dataclasses.fields(C2FNetConfig)} - {"in_channels", "num_classes",
                                                                           "small_classes"}
        bad = sorted(set(self.arch) - arch_fields)
        if bad:
            raise ConfigError(f"segmenter training option arch: unknown field(s) {bad}; known: {sorted(arch_fields)}")

    def validate(self) -> SegTrainConfig:
        """Check the ranges; raise :class:`ConfigError` naming the option."""
        checks = [("coarse_steps", self.coarse_steps >= 0), ("fine_steps", self.fine_steps >= 0),
                  ("batch_size", self.batch_size >= 1), ("crop_size", self.crop_size >= 32),
                  ("small_fraction", 0 <= self.small_fraction <= 1), ("lr", self.lr > 0),
                  ("weight_decay", self.weight_decay >= 0), ("warmup_steps", self.warmup_steps >= 0),
                  ("fine_windows", self.fine_windows >= 0), ("fine_gt_windows", self.fine_gt_windows >= 0),
                  ("color_jitter", self.color_jitter >= 0),
                  ("max_seconds", self.max_seconds is None or self.max_seconds > 0),
                  ("val_fraction", 0 <= self.val_fraction < 0.5), ("val_block", self.val_block >= 16),
                  ("val_evals", self.val_evals >= 1), ("patience", self.patience >= 0),
                  ("log_every", self.log_every >= 1)]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"segmenter training option {name} = {getattr(self, name)!r} is out of range.")
        if self.coarse_steps + self.fine_steps == 0:
            raise ConfigError("segmenter training: coarse_steps and fine_steps are both 0; nothing would train.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SegTrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(data) - names)
        if bad:
            raise ConfigError(f"{source}: unknown segmenter training option(s) {bad}; known: {sorted(names)}")
        arch = data.get("arch", {})
        if not isinstance(arch, dict):
            raise ConfigError(f"{source}: arch must be a table, got {arch!r}")
        arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in arch.items()}
        return cls(**{**data, "arch": arch}) if "arch" in data else cls(**data)

    def to_toml(self) -> str:
        """TOML text (options that are None are left out: they read back as None)."""
        from geors.config import toml_value

        lines, arch = [], []
        for k, v in self.to_dict().items():
            if k == "arch":
                arch = [f"{a} = {toml_value(b)}" for a, b in v.items() if b is not None]
            elif v is not None:
                lines.append(f"{k} = {toml_value(v)}")
        return "\n".join(lines + ["", "[arch]", *arch, ""])

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> SegTrainConfig:
        from geors.config import read_toml

        p = Path(path)
        return cls.from_dict(read_toml(p, "the segmenter config"), source=str(p))


# ----------------------------------------------------------------------------- phases
def phases_to_learn(tiles: Sequence[SegTile], classes: Sequence[str], small_ids: Sequence[int]
                    ) -> tuple[bool, str | None]:
    """Whether the fine phase has something to learn, and why not; raise when the coarse phase has nothing.

    Raises:
        LabelError: every labelled pixel is of one class (the coarse loss would be 0 from the start and the
            model would paint every pixel with that class).
    """
    counts = label_pixels(tiles, len(classes))
    present = [classes[i] for i in np.nonzero(counts)[0]]
    if len(present) < 2:
        raise LabelError(f"every labelled training pixel is class {present[0] if present else None!r}: the coarse "
                         "phase has nothing to learn and the model would paint every pixel as that class. Label "
                         "the background too (pixels outside polygons are background by default) or add classes.")
    small = counts[list(small_ids)].sum() if small_ids else 0
    if not small_ids:
        return False, "no small classes"
    if not small:
        return False, f"no labelled pixel of the small classes {[classes[i] for i in small_ids]}"
    if small == counts.sum():
        return False, "every labelled pixel is of a small class (nothing to tell them from)"
    return True, None


ProgressFn = Callable[[dict[str, Any]], None]


def _iou_table(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    per = {c: (float(tp[i] / union[i]) if cm[i].sum() else None) for i, c in enumerate(classes)}
    present = [v for v in per.values() if v is not None]
    return {"iou": per, "miou": float(np.mean(present)) if present else None, "pixels": int(cm.sum())}


def validate_segmenter(model: C2FNet, tiles: Sequence[SegTile], classes: Sequence[str], refine: bool,
                       device) -> dict[str, Any]:
    """Per-class IoU and mIoU (classes with validation pixels) of the model on labelled validation tiles."""
    k = len(classes)
    cm = np.zeros((k, k), np.int64)
    was = (model.coarse.training, model.fine.training)
    model.eval()
    with torch.inference_mode():
        for t in tiles:
            pred = model(torch.from_numpy(t.image[None]).to(device), refine=refine).argmax(1)[0].cpu().numpy()
            m = t.label != IGNORE
            cm += np.bincount(t.label[m].astype(np.int64) * k + pred[m], minlength=k * k).reshape(k, k)
    model.coarse.train(was[0])
    model.fine.train(was[1])
    return _iou_table(cm, classes)


def _run_phase(name: str, net: torch.nn.Module, steps: int, budget: float | None, step_fn: Callable[[int], float],
               opt, cfg: SegTrainConfig, progress: ProgressFn | None, validate: Callable[[], dict] | None,
               later_s: float = 0.0) -> dict[str, Any]:
    """One phase on a :class:`geors.train.schedule.BudgetSchedule`: planned steps, warm-up + cosine, validation
    passes as side work (their cost reserved in the plan), the best validated weights kept."""
    from geors.train.schedule import BudgetSchedule

    sched = BudgetSchedule(budget, None if budget is not None else steps, warmup_steps=cfg.warmup_steps,
                           probe_steps=5, min_steps=min(20, max(steps, 1)))
    base = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict] | None = None
    since_best = 0
    stop = None
    val_s = 0.0
    done_evals = 0
    quota = 0  # validations due so far (step * val_evals // planned): a re-plan does not cause a burst of them

    def run_validation(step: int) -> None:
        nonlocal best, since_best, val_s, done_evals
        tv = time.perf_counter()
        with sched.side_work():
            res = validate()
        val_s = time.perf_counter() - tv
        done_evals += 1
        sched.set_reserve(val_s * max(cfg.val_evals - done_evals, 0))
        history.append({"step": step, "miou": res["miou"], "iou": res["iou"]})
        score = res["miou"] if res["miou"] is not None else -1.0
        if best is None or score > best[0] + 1e-6:
            best = (score, step, copy.deepcopy(net.state_dict()))
            since_best = 0
        else:  # a tie keeps the later weights (further trained) but is no improvement
            if score >= best[0] - 1e-9:
                best = (best[0], step, copy.deepcopy(net.state_dict()))
            since_best += 1
        log.info("%s step %d validation mIoU %.4f (best %.4f at step %d)", name, step, score, best[0], best[1])
        if progress is not None:
            progress({"phase": name, "step": step, "steps": sched.total, "validation_miou": res["miou"],
                      "best_miou": best[0], "best_step": best[1]})

    sched.start()
    step = 0
    while not sched.finished(step):
        f = sched.lr_factor(step)
        for g, b in zip(opt.param_groups, base, strict=True):
            g["lr"] = b * f
        losses.append(step_fn(step))
        step += 1
        sched.step_done(step)
        due = step * cfg.val_evals // max(sched.total, 1)
        if validate is not None and (due > quota or sched.finished(step)):
            quota = due
            run_validation(step)
            if cfg.patience and since_best >= cfg.patience and step >= sched.total // 2:
                stop = f"validation mIoU did not improve for {cfg.patience} evaluations"
        if step % cfg.log_every == 0 or sched.finished(step) or stop:
            rec = {"phase": name, "step": step, "steps": sched.total,
                   "loss": float(np.nanmean(losses[-cfg.log_every:])), "elapsed_s": round(sched.elapsed_s(), 1),
                   "eta_s": round(sched.eta_s(step) + later_s, 1)}
            log.info("%s step %d/%d loss %.4f eta %.0fs", name, step, sched.total, rec["loss"], rec["eta_s"])
            if progress is not None:
                progress(rec)
        if stop:
            break
    stop = stop or sched.stop_reason(step)
    if validate is not None and (not history or history[-1]["step"] != step):
        run_validation(step)
    kept = step
    if best is not None and best[1] != step:
        net.load_state_dict(best[2])
        kept = best[1]
    log.info("%s: %s; weights of step %d kept", name, stop, kept)
    return {"steps": step, "planned_steps": sched.total, "kept_step": kept, "stop": stop,
            "seconds": round(sched.elapsed_s(), 1), "schedule": sched.summary(step),
            "final_loss": float(np.nanmean(losses[-cfg.log_every:])) if losses else None,
            "validation": history}


def train_segmenter(
    tiles: Sequence[SegTile],
    classes: Sequence[str],
    small_classes: Sequence[str],
    cfg: SegTrainConfig | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    init_coarse: C2FNet | None = None,
    val_tiles: Sequence[SegTile] | None = None,
) -> tuple[C2FNet, dict[str, Any]]:
    """Train C2FNet: coarse net first, then (coarse frozen) the fine net on selected windows.

    Args:
        tiles: labelled windows (:func:`load_training_tiles`).
        classes: class names, id order.
        small_classes: names of the small-object classes (must be in ``classes``).
        cfg: schedule; see :class:`SegTrainConfig`.
        meta: extra model metadata (tile_size, gsd_m, bands, normalisation...).
        progress: called with ``{"phase", "step", "steps", "loss", "elapsed_s", "eta_s"}`` every ``log_every``
            steps and with ``{"phase", "step", "steps", "validation_miou", "best_miou", "best_step"}`` after
            each validation pass.
        init_coarse: start from this model's coarse weights (trained further for the coarse phase).
        val_tiles: validation tiles; None holds back ``cfg.val_fraction`` of the labels in spatial blocks.

    Returns:
        ``(model in eval mode on CPU, metadata)`` ready for :func:`geors.models.registry.save_model`;
        ``metadata["training"]["validation"]`` has the final per-class validation IoU.

    Raises:
        LabelError: no tiles, or every labelled pixel of one class (nothing to learn).
        ConfigError: unknown small classes, too many classes, options out of range.
    """
    from geors.device import resolve_device

    t_start = time.perf_counter()
    cfg = (cfg or SegTrainConfig()).validate()
    if not tiles:
        raise LabelError("no labelled training windows")
    unknown = [c for c in small_classes if c not in classes]
    if unknown:
        raise ConfigError(f"--small-classes {unknown} are not among the label classes {list(classes)}.")
    if len(classes) > 255:
        raise ConfigError(f"{len(classes)} classes: at most 255 fit a uint8 class raster.")
    small_ids = [list(classes).index(c) for c in small_classes]
    phases_to_learn(tiles, classes, small_ids)  # refuse a one-class set before splitting it
    split_info: dict[str, Any] = {"given": True}
    if val_tiles is None and cfg.val_fraction > 0:
        tiles, val_tiles, split_info = split_validation(tiles, len(classes), cfg.val_fraction, cfg.val_block,
                                                        seed=cfg.seed)
        if not val_tiles:
            log.warning("no validation: %s; the last weights are kept", split_info["reason"])
    val_tiles = list(val_tiles or [])
    fine_learns, fine_skip = phases_to_learn(tiles, classes, small_ids)
    if small_ids and not fine_learns:
        log.warning("fine phase skipped: %s; the coarse phase gets the whole budget", fine_skip)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    c_in = int(tiles[0].image.shape[0])
    arch = C2FNetConfig(in_channels=c_in, num_classes=len(classes), small_classes=tuple(small_ids), **cfg.arch)
    model = C2FNet(arch)
    if init_coarse is not None:
        model.coarse.load_state_dict(init_coarse.coarse.state_dict())
    model.to(device)
    sampler = CropSampler(tiles, small_ids, rng)
    fine_steps = cfg.fine_steps if fine_learns else 0
    coarse_share = cfg.coarse_steps / max(cfg.coarse_steps + fine_steps, 1)

    def validator(refine: bool) -> Callable[[], dict] | None:
        if not val_tiles:
            return None
        return lambda: validate_segmenter(model, val_tiles, classes, refine, device)

    # --- phase 1: coarse
    model.coarse.train()
    opt = torch.optim.AdamW(model.coarse.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def coarse_step(step: int) -> float:
        x, y = sampler.batch(cfg.batch_size, cfg.crop_size, cfg.small_fraction, cfg.color_jitter)
        xt = torch.from_numpy(x).to(device)
        yt = torch.from_numpy(y.astype(np.int64)).to(device)
        if bool((yt == IGNORE).all()):
            return float("nan")
        loss = F.cross_entropy(model.coarse(xt), yt, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    budget_c = later = None
    if cfg.max_seconds is not None:  # the share of what is left (building the model and optimiser took time)
        left = max(0.0, cfg.max_seconds - (time.perf_counter() - t_start))
        budget_c, later = max(left * coarse_share, 1e-3), left * (1 - coarse_share)
    coarse_info: dict[str, Any] = {"steps": 0}
    if cfg.coarse_steps:
        coarse_info = _run_phase("coarse", model.coarse, cfg.coarse_steps, budget_c, coarse_step, opt, cfg, progress,
                                 validator(False), later_s=later or 0.0)

    # --- phase 2: fine, coarse frozen
    model.coarse.eval()
    for p in model.coarse.parameters():
        p.requires_grad_(False)
    fine_info: dict[str, Any] = {"steps": 0, "skipped": fine_skip}
    budget_f = None
    if cfg.max_seconds is not None:
        budget_f = cfg.max_seconds - (time.perf_counter() - t_start)
        if fine_learns and fine_steps > 0 and budget_f < 1.0:
            fine_learns, fine_info["skipped"] = False, "no time left of the budget"
            log.warning("fine phase skipped: the coarse phase used the whole budget")
    if fine_learns and fine_steps > 0:
        model.fine.train()
        opt_f = torch.optim.AdamW(model.fine.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        k = min(arch.window, cfg.crop_size)
        small_lut = torch.from_numpy(sampler.small_lut).to(device)

        def fine_step(step: int) -> float:
            x, y = sampler.batch(cfg.batch_size, cfg.crop_size, max(cfg.small_fraction, 0.75), cfg.color_jitter)
            xt = torch.from_numpy(x).to(device)
            yt = torch.from_numpy(y.astype(np.int64)).to(device)
            with torch.no_grad():
                pred = model.coarse(xt).argmax(1)
            windows = select_windows(small_lut[pred], k, arch.window_stride, cfg.fine_windows, arch.min_pixels)
            for i in range(len(windows)):
                pts = torch.nonzero(small_lut[yt[i]])
                for _ in range(cfg.fine_gt_windows if len(pts) else 0):
                    py, px = pts[int(rng.integers(len(pts)))].tolist()
                    y0 = int(np.clip(py - k // 2 + int(rng.integers(-k // 4, k // 4 + 1)), 0, cfg.crop_size - k))
                    x0 = int(np.clip(px - k // 2 + int(rng.integers(-k // 4, k // 4 + 1)), 0, cfg.crop_size - k))
                    windows[i].append((y0, x0, k))
                if not windows[i]:  # a random window keeps the batch non-empty and shows negatives
                    windows[i].append((int(rng.integers(cfg.crop_size - k + 1)),
                                       int(rng.integers(cfg.crop_size - k + 1)), k))
            xw = crop_windows(xt, windows)
            yw = crop_windows(yt[:, None], windows)[:, 0]
            target = small_lut[yw.clamp(max=255)].float()
            mask = (yw != IGNORE).float()
            if float(mask.sum()) == 0:
                return float("nan")
            z = arch.zoom
            inp = F.interpolate(xw, scale_factor=z, mode="bilinear", align_corners=False) if z > 1 else xw
            logit = model.fine(inp)
            if z > 1:
                logit = F.avg_pool2d(logit, z)
            loss = (F.binary_cross_entropy_with_logits(logit[:, 0], target, reduction="none") * mask).sum() / mask.sum()
            opt_f.zero_grad(set_to_none=True)
            loss.backward()
            opt_f.step()
            return float(loss.detach())

        fine_info = _run_phase("fine", model.fine, fine_steps, budget_f, fine_step, opt_f, cfg, progress,
                               validator(True))
    for p in model.coarse.parameters():
        p.requires_grad_(True)
    if small_ids and not fine_info["steps"]:
        arch.top_n = 0  # a fine network that never trained must not change the coarse prediction
    validation: dict[str, Any] = {"split": split_info, "tiles": len(val_tiles)}
    if val_tiles:
        validation.update(validate_segmenter(model, val_tiles, classes, True, device))
        validation["coarse_only"] = coarse_only = validate_segmenter(model, val_tiles, classes, False, device)
        if (fine_info.get("steps") and arch.aggregation == "paper" and coarse_only["miou"] is not None
                and (validation["miou"] or 0.0) < coarse_only["miou"] - 1e-6):
            # the fine stage made validation worse (a fine net too young for its windows): refine no window
            log.warning("fine stage not kept: validation mIoU %.4f with it, %.4f with the coarse network alone; "
                        "the model refines no window (top_n 0); a longer --max-minutes trains the fine network "
                        "further", validation["miou"], coarse_only["miou"])
            arch.top_n = 0
            fine_info["kept"] = False
            validation.update({k: coarse_only[k] for k in ("iou", "miou", "pixels")})
        log.info("validation IoU per class: %s", ", ".join(
            f"{c} {v:.3f}" for c, v in validation["iou"].items() if v is not None))
    model.eval().cpu()

    full = dict(meta or {})
    full.update(
        architecture="c2fnet",
        arch_args=arch.to_dict(),
        classes=list(classes),
        small_classes=list(small_classes),
        task="segmentation",
        bands=c_in,
    )
    full.setdefault("colours", default_colours(len(classes)))
    full.setdefault("tile_size", 640)
    full.setdefault("overlap", 128)
    full.setdefault("normalisation", {"method": "percentile_stretch", "percentiles": [2, 98], "scope": "scene",
                                      "range": [0, 1]})
    training = dict(full.get("training", {}))
    training.update(config=cfg.to_dict(), coarse=coarse_info, fine=fine_info, validation=validation,
                    seconds=round(time.perf_counter() - t_start, 1), tiles=len(tiles))
    full["training"] = training
    return model, full
