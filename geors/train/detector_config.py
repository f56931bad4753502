"""Options of the detector's training (:class:`TrainConfig`): every field with its default and why, checked
on construction, and read from / written to TOML (the ``[train]`` table of a training run file)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from geors.config import read_toml, toml_value
from geors.errors import ConfigError
from geors.train.calibrate import GATE_TARGET_RECALL

__all__ = ["DEFAULT_STEPS", "TrainConfig"]

DEFAULT_STEPS = 1000
"""Steps of a run without a time budget (``max_seconds=None``) and without ``steps``: measured runs of 30-850 objects
were still improving after 286-673 steps, 310 ships reached AP50 0.42-0.54 at 600 (docs/detector.md, issue 25)."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`train_detector` (sizes in pixels); TOML in/out with :meth:`to_toml` / :meth:`from_toml`.

    The schedule: by default the time budget ``max_seconds`` sets it (the
    step time is measured on the first steps and the number of steps planned
    so that training, validation and calibration fill the budget; warm-up
    then cosine decay over the planned steps; :mod:`geors.train.schedule`).
    ``steps`` (or ``epochs`` x ``steps_per_epoch``) gives a fixed number of
    steps instead, which the budget only caps; without a budget and without
    ``steps``, :data:`DEFAULT_STEPS` steps.

    Attributes:
        max_seconds: time budget in seconds for the whole of training
            (validation and calibration included); None = no budget.
        steps: a fixed number of steps (the budget then only caps them); None
            = planned from the budget (or :data:`DEFAULT_STEPS` without one).
        validations: validations (AP50 on the held-back blocks) over a planned
            or ``steps`` schedule, evenly spaced; the last one at the last step.
        epochs: the older way to fix the schedule: ``epochs`` x
            ``steps_per_epoch`` steps, validated after each epoch. None = not
            used. With only ``steps_per_epoch``, 10 epochs; with only
            ``epochs``, :data:`DEFAULT_STEPS` split into them.
        steps_per_epoch: see ``epochs``.
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
        nwd_c: NWD constant in pixels: the paper's 12.7, not the mean object
            size, which would ignore almost every anchor between dense crowns
            (the radius of the ignored zone is set by C; docs/detector.md).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds numpy and torch (crops, jitter, initialisation).
        split_seed: seeds the validation split (:func:`split_validation`),
            independent of ``seed``: runs that differ only in ``seed`` are
            validated on the same tiles, so their validation AP50 can be
            compared (and one chosen by it), and a later ``train_only="gate"``
            step calibrates on the tiles the detector step did not train on.
        log_every: steps between log lines (DEBUG when a progress bar is shown).
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
        val_fraction: share of the labelled objects held back in spatial
            blocks (:func:`geors.train.crops.split_validation`: whole inference
            tiles when there are enough, blocks inside them otherwise) for the
            validation AP50, early stopping and the gate and score
            calibration; 0 = no split (the gate is then disabled and the
            score threshold not calibrated). With a split, fewer than
            :data:`MIN_LABELLED_OBJECTS` objects are refused (LabelError).
        patience: stop after this many validations in a row without a better
            validation AP50 and keep the best weights; None = no early stopping.
        empty_negatives: crops without objects also enter the detector loss
            (RPN negatives, background RoIs; :class:`R2CNNConfig`
            ``empty_negatives``), not only the gate loss as in the paper.
            None = off for a new model (the paper; from scratch it held the
            detector back), the starting model's setting with ``init_from``
            (it helps a fine-tune; measurements in docs/detector.md).
        empty_negatives_from: share of the schedule (0-1) trained as in the
            paper before empty crops join the detector loss (with
            ``empty_negatives`` on; 0 = from the first step; the last step
            always has them). Weights validated during this warm-up are never
            kept, and early stopping counts only the validations after it.
        train_only: ``"gate"`` trains only the gate head (backbone, its
            batch-norm statistics and the detector branch stay frozen), e.g.
            to retrain a model's gate with another pooling without changing
            its detections; None trains everything.
        arch: other :class:`R2CNNConfig` fields to override.
        hard_negative_fraction: share of the crops without objects centred on a
            known false positive instead (``TrainTile.negatives``: detections an
            analyst deleted, :mod:`geors.train.corrections`); no effect on tiles
            without any.
    """

    max_seconds: float | None = 600.0
    steps: int | None = None
    validations: int = 10
    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int = 4
    crop_size: int = 256
    scales: tuple[float, ...] = (1.0,)
    pos_fraction: float = 0.5
    color_jitter: float = 0.1
    paste_fraction: float = 0.0
    contrast_jitter: float = 0.0
    saturation_jitter: float = 0.0
    ema_decay: float = 0.0
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    assigner: str = "nwd_rka"
    num_anchor_scales: int = 6
    anchor_scales: list[float] | None = None
    nwd_c: float = 12.7
    device: str = "auto"
    seed: int = 0
    split_seed: int = 0
    log_every: int = 20
    gate_input_scale: int = 4
    init_from: str | None = None
    gate_recall: float | None = GATE_TARGET_RECALL
    gate_pool: str = "top3"
    val_fraction: float = 0.2
    patience: int | None = 5
    train_only: str | None = None
    empty_negatives: bool | None = None
    empty_negatives_from: float = 0.0
    arch: dict[str, Any] = field(default_factory=dict)
    hard_negative_fraction: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), for JSON metadata and TOML."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training config") -> TrainConfig:
        """A config from plain values, each checked against its field's type.

        Raises:
            ConfigError: an unknown option or a value of the wrong type, naming ``source``.
        """
        hints = get_type_hints(cls)
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise ConfigError(f"{source}: unknown training option(s) {unknown}; known: {sorted(hints)}")
        values = {k: _checked(source, k, v, hints[k]) for k, v in data.items()}
        return cls(**values)

    def to_toml(self) -> str:
        """TOML text of every option; None (TOML has no null) is written as ``"none"``."""
        return "".join(f"{k} = {toml_value(v)}\n" for k, v in self.to_dict().items())

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a TOML file written by :meth:`to_toml` (or by hand; a ``[train]`` table is accepted too)."""
        p = Path(path)
        data = read_toml(p, "the training config")
        if set(data) == {"train"} and isinstance(data["train"], dict):
            data = data["train"]
        return cls.from_dict(data, source=str(p))


def _checked(source: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field type ``hint`` (lists to tuples, ints to floats) or ConfigError."""
    args = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, UnionType) else [hint]
    if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in get_args(hint)):
        if type(None) in get_args(hint):
            return None
        raise ConfigError(f"{source}: {name} cannot be empty")
    for a in args:
        origin = get_origin(a) or a
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin in (tuple, list) and isinstance(value, list | tuple) and all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in value):
            return origin(float(x) for x in value)
        if origin is dict and isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{source}: {name} = {value!r} is not a {hint}")
