"""A training run described: what to train (``kind``), from what (:class:`TrainData`) and how (the kind's
training config), type-checked, and read from / written to one TOML file (:class:`TrainingRun`).

:func:`geors.train.api.train` runs it; this module only describes it (no torch, no training code is imported
until a config class is asked for).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from geors.config import check_type, read_toml, save_toml, toml_value
from geors.errors import ConfigError

__all__ = ["KINDS", "SEGMENTER_BUDGET_S", "TrainData", "TrainingRun", "default_train_config"]


KINDS = ("detector", "gate", "segmenter")
"""What :func:`train` makes: ``detector`` and ``gate`` train the same R2-CNN gate + detector (``gate`` is the name
of the step that retrains only the gate, with ``TrainConfig(train_only="gate", init_from=...)``); ``segmenter``
trains C2FNet."""

_DETECTOR_ONLY = ("empty_scenes", "rename_class", "gsd", "corrections", "reviewed_area")
_SEGMENTER_ONLY = ("classes", "small_classes", "background", "unlabelled", "labelled_area")


def _strs(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | os.PathLike):
        return (os.fspath(value),)
    return tuple(os.fspath(v) if isinstance(v, os.PathLike) else v for v in value)


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainData:
    """What a model learns from: scenes, their labels and how to read them (the CLI's data options).

    Attributes:
        scenes: training rasters (``--scene``; paths, one per label file).
        labels: the matching label files (``--labels``): boxes or polygons in any OGR format and CRS, VOC XML or
            CSV for the detector; polygons or a class raster for the segmenter.
        empty_scenes: detector: images without objects, used whole as empty tiles (``--empty-scene``).
        class_field: attribute with the class name in vector labels (``--class-field``).
        rename_class: detector: ``{OLD: NEW}`` class renames before training; several OLD to one NEW merge
            classes (``--rename-class``).
        bands: 1-based bands of the scenes (``--bands``); None = as :func:`geors.open_scene`.
        allow_ungeoreferenced: accept images without CRS (labels in pixel coordinates).
        gsd: detector: ground sample distance in metres to record for scenes without georeferencing (``--gsd``).
        tile_size, overlap: inference grid recorded in the model (``--tile``, ``--overlap``); the detector also
            cuts its training tiles on it. None: 640 / 128, or a fine-tuned model's own.
        classes: segmenter: class names of a label raster's ids in order (``--classes``).
        small_classes: segmenter: small-object classes refined by the fine network (``--small-classes``).
        background: segmenter: name of the background class (``--background``).
        unlabelled: segmenter: pixels no label covers: ``auto``, ``background`` or ``ignore`` (``--unlabelled``).
        labelled_area: segmenter: polygons of the area where the labels are complete (``--labelled-area``).
        corrections: detector: a geors output whose detections layer an analyst edited (``--corrections``):
            the training data instead of ``labels`` (kept and drawn boxes are objects, deleted ones hard
            negatives, inside the reviewed area; :mod:`geors.train.corrections`). ``scenes`` then only say
            where the run's scenes are now, if they moved; the model to fine-tune defaults to the run's.
        reviewed_area: detector, with ``corrections``: polygons of the area the analyst reviewed
            (``--reviewed-area``); None = the layer ``reviewed_area`` of the corrections file, else the
            tiles holding an edit.
    """

    scenes: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    empty_scenes: tuple[str, ...] = ()
    class_field: str | None = None
    rename_class: dict[str, str] = field(default_factory=dict)
    bands: tuple[int, ...] | None = None
    allow_ungeoreferenced: bool = False
    gsd: float | None = None
    tile_size: int | None = None
    overlap: int | None = None
    classes: tuple[str, ...] | None = None
    small_classes: tuple[str, ...] = ()
    background: str | None = None
    unlabelled: str = "auto"
    labelled_area: str | None = None
    corrections: str | None = None
    reviewed_area: str | None = None

    def __post_init__(self) -> None:  # Python callers may pass a path, lists or Path objects
        for name in ("scenes", "labels", "empty_scenes", "small_classes"):
            object.__setattr__(self, name, _strs(getattr(self, name)))
        if self.classes is not None:
            object.__setattr__(self, "classes", _strs(self.classes))
        if self.bands is not None and not isinstance(self.bands, tuple):
            object.__setattr__(self, "bands", tuple(self.bands))
        for name in ("labelled_area", "corrections", "reviewed_area"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        object.__setattr__(self, "rename_class", dict(self.rename_class or {}))

    def validate(self, kind: str, source: str = "training data") -> TrainData:
        """Types and the options of ``kind``; raise :class:`ConfigError` naming the option."""
        for f in fields(self):
            _check_value(getattr(self, f.name), _DATA_TYPES[f.name], f"{source} {f.name}")
        if self.corrections is not None:
            if self.labels:
                raise ConfigError(f"{source}: --corrections is the training data; leave out --labels (--scene "
                                  "only says where the run's scenes are now, if they moved).")
            if self.bands is not None:
                raise ConfigError(f"{source}: with --corrections the run's bands are used; leave out --bands.")
        elif self.reviewed_area is not None:
            raise ConfigError(f"{source}: --reviewed-area goes with --corrections (the area of the edited "
                              "detections that was reviewed).")
        elif not self.scenes:
            raise ConfigError(f"{source}: give at least one scene (--scene) with its labels (--labels), or "
                              "--corrections (an edited geors output).")
        if self.corrections is None and len(self.scenes) != len(self.labels):
            raise ConfigError(f"give one --labels per --scene ({len(self.scenes)} scenes, "
                              f"{len(self.labels)} label files).")
        defaults = TrainData()
        other = _SEGMENTER_ONLY if kind != "segmenter" else _DETECTOR_ONLY
        given = [n for n in other if getattr(self, n) != getattr(defaults, n)]
        if given:
            raise ConfigError(f"{source}: {given} are options of the "
                              f"{'segmenter' if kind != 'segmenter' else 'detector'}, not of the {kind}.")
        if self.tile_size is not None and self.tile_size < 16:
            raise ConfigError(f"{source}: --tile must be >= 16 pixels, got {self.tile_size}.")
        if self.overlap is not None and (self.overlap < 0 or (self.tile_size and self.overlap >= self.tile_size)):
            raise ConfigError(f"{source}: --overlap must be >= 0 and smaller than the tile, got {self.overlap}.")
        if self.gsd is not None and self.gsd <= 0:
            raise ConfigError(f"{source}: --gsd must be > 0 metres, got {self.gsd}.")
        if self.unlabelled not in ("auto", "background", "ignore"):
            raise ConfigError(f"{source}: --unlabelled must be auto, background or ignore, got {self.unlabelled!r}.")
        if kind == "segmenter" and not self.small_classes:
            raise ConfigError("--small-classes needs at least one class name.")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), for TOML and the model's metadata."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training data") -> TrainData:
        """Checked values: an unknown option or a wrong type raises one ConfigError naming ``source`` and the key."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown data option(s) {unknown}; known: {sorted(names)}")
        for k, v in data.items():
            _check_value(v, _DATA_TYPES[k], f"{source} {k}")
        return cls(**data)


# field -> (what it must be, the words for it)
_DATA_TYPES: dict[str, tuple[str, bool]] = {
    "scenes": ("paths", False), "labels": ("paths", False), "empty_scenes": ("paths", False),
    "class_field": ("str", True), "rename_class": ("renames", False), "bands": ("ints", True),
    "allow_ungeoreferenced": ("bool", False), "gsd": ("float", True), "tile_size": ("int", True),
    "overlap": ("int", True), "classes": ("strs", True), "small_classes": ("strs", False),
    "background": ("str", True), "unlabelled": ("str", False), "labelled_area": ("path", True),
    "corrections": ("path", True), "reviewed_area": ("path", True),
}
def _check_value(value: Any, spec: tuple[str, bool], where: str) -> None:
    kind, optional = spec
    check_type(value, f"{kind} | None" if optional else kind, where)


# ----------------------------------------------------------------------------- one training run
def _train_config_class(kind: str):
    if kind == "segmenter":
        from geors.train.segmenter import SegTrainConfig

        return SegTrainConfig
    from geors.train.detector import TrainConfig

    return TrainConfig


SEGMENTER_BUDGET_S = 600.0
"""The segmenter's default time budget in :func:`train` and TOML files, as ``geors train segmenter``'s
``--max-minutes 10`` (``SegTrainConfig`` itself defaults to no budget)."""


def default_train_config(kind: str):
    """The training options of ``kind`` when none are given: the CLI's defaults."""
    cls = _train_config_class(kind)
    return cls(max_seconds=SEGMENTER_BUDGET_S) if kind == "segmenter" else cls()


@dataclass(frozen=True)
class TrainingRun:
    """One training run: what to train (``kind``), from what (``data``) and how (``train``); TOML in/out.

    Attributes:
        kind: ``detector``, ``gate`` or ``segmenter`` (:data:`KINDS`).
        data: :class:`TrainData`.
        train: :class:`geors.train.detector.TrainConfig` (detector, gate) or
            :class:`geors.train.segmenter.SegTrainConfig` (segmenter); None = the CLI's defaults
            (:func:`default_train_config`: for the segmenter a 10-minute budget).
        name: model name stored in the file; None = the output file's stem.
    """

    kind: str = "detector"
    data: TrainData = field(default_factory=TrainData)
    train: Any = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"training kind must be one of {list(KINDS)}, got {self.kind!r}")
        cls = _train_config_class(self.kind)
        if self.train is None:
            object.__setattr__(self, "train", default_train_config(self.kind))
        elif not isinstance(self.train, cls):
            raise ConfigError(f"a {self.kind} trains with a {cls.__name__}, got {type(self.train).__name__}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.name is not None:
            out["name"] = self.name
        out["data"] = self.data.to_dict()
        out["train"] = self.train.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "training run") -> TrainingRun:
        """Checked values (``"none"`` reads as None, as TOML has no null)."""
        unknown = sorted(set(data) - {"kind", "name", "data", "train"})
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; a training run has kind, name, [data], [train]")
        kind = data.get("kind", "detector")
        if kind not in KINDS:
            raise ConfigError(f"{source}: kind = {kind!r}: expected one of {list(KINDS)}")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{source}: name = {name!r}: expected a text in quotes")
        for sec in ("data", "train"):
            if not isinstance(data.get(sec, {}), dict):
                raise ConfigError(f"{source}: [{sec}] must be a table")
        values = {k: (None if v == "none" else v) for k, v in data.get("data", {}).items()}
        train_data = TrainData.from_dict(values, source=f"{source}: [data]")
        return cls(kind=kind, data=train_data, train=_train_config_from_dict(kind, data.get("train", {}),
                                                                               f"{source}: [train]"), name=name)

    def to_toml(self) -> str:
        """TOML text; None is written as ``"none"`` (TOML has no null), or left out where it is the default."""
        lines = [f"kind = {toml_value(self.kind)}"]
        if self.name is not None:
            lines.append(f"name = {toml_value(self.name)}")
        lines += ["", "[data]"]
        defaults = TrainData().to_dict()
        for k, v in self.data.to_dict().items():
            if v is None and defaults[k] is None:
                continue
            lines.append(f"{k} = {toml_value(v)}")
        lines += ["", "[train]"]
        cls_defaults = default_train_config(self.kind).to_dict()
        for k, v in self.train.to_dict().items():
            if v is None and cls_defaults.get(k) is None:
                continue
            lines.append(f"{k} = {toml_value(v)}")
        return "\n".join(lines) + "\n"

    def save_toml(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_toml` to ``path`` (the folder must exist); return the path."""
        return save_toml(path, self.to_toml())

    @classmethod
    def from_toml(cls, path: str | os.PathLike, kind: str | None = None) -> TrainingRun:
        """Read a file written by :meth:`to_toml` (or by hand).

        A file with only training options (a flat list or a ``[train]`` table, e.g.
        ``TrainConfig.to_toml()``) is read too, with empty ``[data]``; ``kind`` is then the kind to read it
        as (default: the file's ``kind``, else ``detector``).
        """
        p = Path(path)
        data = read_toml(p, "the training config")
        if not {"kind", "data", "train"} & set(data):
            data = {"train": data}  # only training options (TrainConfig.to_toml())
        if kind is not None:
            if "kind" in data and data["kind"] != kind and {data["kind"], kind} != {"detector", "gate"}:
                raise ConfigError(f"{p}: kind = {data['kind']!r}, but it is read to train a {kind}")
            data = {**data, "kind": kind}
        return cls.from_dict(data, source=str(p))


def _train_config_from_dict(kind: str, values: dict[str, Any], source: str):
    """The kind's training config from plain values, each type-checked with a message naming ``source`` and key."""
    cls = _train_config_class(kind)
    types = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"{source}: unknown {'segmenter ' if kind == 'segmenter' else ''}training option(s) "
                          f"{unknown}; known: {sorted(types)}")
    values = {k: (None if v == "none" and "None" in str(types[k]) else v) for k, v in values.items()}
    if isinstance(values.get("arch"), dict):  # an architecture value None is written "none" (TOML has no null)
        values["arch"] = {k: (None if v == "none" else v) for k, v in values["arch"].items()}
    for k, v in values.items():  # numbers, switches and texts; the config's own checks do the rest
        check_type(v, types[k], f"{source} {k}")
    if kind == "segmenter":  # options the file leaves out: the CLI's defaults (a budget)
        values = {"max_seconds": SEGMENTER_BUDGET_S, **values}
    return cls.from_dict(values, source=source)
