"""Frozen run configuration: one dataclass per stage and :class:`PipelineConfig`, readable and writable as TOML.

The CLI builds a :class:`PipelineConfig` from its options (or from
``--config run.toml`` with options on the command line overriding the file),
the Python API takes the same object, and the pipeline records the effective
configuration as JSON in ``geors_runs``. Everything is validated here, before
any output is created or opened for writing; a bad value raises
:class:`geors.errors.ConfigError` naming the option and its allowed range.

``None`` in a field means "the default of the model or stage": e.g. the tile
size of a detector run is the model's tile size, of a box-prompted mask run
SAM's native 1024 px. Python and the CLI therefore get the same defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from geors.errors import ConfigError

__all__ = [
    "TilingConfig",
    "DetectConfig",
    "MaskConfig",
    "SegmentConfig",
    "ExecutionConfig",
    "OutputConfig",
    "PipelineConfig",
    "DEFAULT_SCORE_THRESHOLD",
    "MAX_TILE_SIZE",
    "read_toml",
    "toml_value",
]

#: Detections below this score are not written (and evaluation reports precision/recall at it).
DEFAULT_SCORE_THRESHOLD = 0.3

#: Largest tile side accepted: a 8192² x 4-band float32 tile is already 1 GiB.
MAX_TILE_SIZE = 8192

def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TilingConfig:
    """Tiles of ``tile_size`` px with ``overlap`` px (None = the model's or stage's default)."""

    tile_size: int | None = None
    overlap: int | None = None
    bands: tuple[int, ...] | None = None

    def validate(self) -> None:
        if self.tile_size is not None:
            if not isinstance(self.tile_size, int) or isinstance(self.tile_size, bool) or not (
                    16 <= self.tile_size <= MAX_TILE_SIZE):
                raise ConfigError(f"--tile must be an integer from 16 to {MAX_TILE_SIZE} pixels, "
                                  f"got {self.tile_size!r}")
        if self.overlap is not None:
            if not isinstance(self.overlap, int) or isinstance(self.overlap, bool) or self.overlap < 0:
                raise ConfigError(f"--overlap must be an integer >= 0 pixels, got {self.overlap!r}")
            if self.tile_size is not None and self.overlap >= self.tile_size:
                raise ConfigError(f"--overlap must be smaller than --tile ({self.tile_size}), got {self.overlap}")
        if self.bands is not None:
            if not self.bands or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in self.bands):
                raise ConfigError(f"--bands must be 1-based band numbers, e.g. 4,3,2; got {self.bands!r}")


@dataclass(frozen=True)
class DetectConfig:
    """R2-CNN gate + detector. ``gate_threshold`` and ``score_threshold`` None = the model's calibrated values
    (a model without a calibrated score threshold: :data:`DEFAULT_SCORE_THRESHOLD`)."""

    model: str | None = None
    gate_threshold: float | None = None
    use_gate: bool = True
    score_threshold: float | None = None
    # also write detections scoring down to this (field passes_threshold = 0): AP is not capped by the threshold
    min_score: float | None = None

    def validate(self) -> None:
        if self.gate_threshold is not None:
            if not self.use_gate:
                raise ConfigError("--gate-threshold and --no-gate exclude each other")
            _unit("--gate-threshold", self.gate_threshold)
        if self.score_threshold is not None:
            _unit("--score-threshold", self.score_threshold)
        if self.min_score is not None:
            _unit("--min-score", self.min_score)
            if self.score_threshold is not None and self.min_score > self.score_threshold:
                raise ConfigError(f"--min-score {self.min_score} is above --score-threshold {self.score_threshold}: "
                                  "it writes boxes below the threshold, so give a lower score")


@dataclass(frozen=True)
class MaskConfig:
    """Box -> mask engine (``auto``, ``box``, ``grabcut``, a SAM kind or checkpoint) and polygon options."""

    engine: str = "auto"
    simplify_px: float = 0.5
    multipart: str = "largest"

    def validate(self) -> None:
        if not str(self.engine).strip():
            raise ConfigError("--sam must name an engine: auto, box, grabcut, vit_b, ... or a checkpoint path")
        if not (isinstance(self.simplify_px, int | float) and 0 <= self.simplify_px <= 100):
            raise ConfigError(f"--simplify must be within [0, 100] pixels, got {self.simplify_px!r}")
        if self.multipart not in ("largest", "all"):
            raise ConfigError(f"multipart must be 'largest' or 'all', got {self.multipart!r}")


@dataclass(frozen=True)
class SegmentConfig:
    """C2FNet semantic segmentation; ``raster_out`` also writes a class GeoTIFF."""

    segmenter: str | None = None
    raster_out: str | None = None

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how the work runs.

    Attributes:
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: tiles per stage call; None = 2 on CPU (measured: batch 8 of 640 px tiles
            peaks ~600 MiB higher for no speed gain on 2 cores), 8 on a GPU.
        workers: batches run at once (threads here, or LocalCluster processes).
        scheduler: None (threads here), ``synchronous``, ``local`` (start a
            LocalCluster) or a scheduler address ``tcp://host:port``.
        threads: torch/OpenCV threads per worker; None = cores / workers, so
            several workers do not oversubscribe the CPU.
    """

    device: str = "auto"
    batch_size: int | None = None
    workers: int = 1
    scheduler: str | None = None
    threads: int | None = None

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("batch_size", "workers"):
            v = getattr(self, name)
            if v is None and name == "batch_size":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1024:
                raise ConfigError(f"{_opt(name)} must be an integer from 1 to 1024, got {v!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or not 1 <= self.threads <= 1024):
            raise ConfigError(f"--threads must be an integer from 1 to 1024, got {self.threads!r}")
        s = self.scheduler
        if s is not None and s not in ("threads", "synchronous", "local") and not (
                isinstance(s, str) and "://" in s):
            raise ConfigError(f"--scheduler must be synchronous, local or an address like tcp://host:8786, got {s!r}")

    def resolved_batch_size(self, on_gpu: bool) -> int:
        return self.batch_size or (8 if on_gpu else 2)

    def threads_per_worker(self) -> int:
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))


@dataclass(frozen=True)
class OutputConfig:
    """What happens to the output.

    Attributes:
        crs: CRS of new layers (any pyproj input, e.g. ``EPSG:32617``); None =
            the first scene's. Features of scenes in other CRSs are reprojected.
        per_scene: write one GeoPackage per scene into the output directory.
        resume: continue a run: skip tiles already in the ledger (same scenes,
            same result-affecting options, or the run is refused).
        overwrite: replace the rows of the given scenes (one transaction per scene).
        strict: a scene that fails to open stops the run (exit 2) instead of
            being reported and skipped.
    """

    crs: str | None = None
    per_scene: bool = False
    resume: bool = False
    overwrite: bool = False
    strict: bool = False

    def validate(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        if self.crs is not None:
            from pyproj import CRS
            from pyproj.exceptions import CRSError

            try:
                CRS.from_user_input(self.crs)
            except CRSError as exc:
                raise ConfigError(f"--crs {self.crs!r} is not a CRS pyproj understands: {exc}") from None


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs besides scenes and output. Which stages run follows from which parts are set:
    ``detect`` (detector), ``masks`` (with detect: masks of detections), ``segment`` (C2FNet)."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    detect: DetectConfig | None = field(default_factory=DetectConfig)
    masks: MaskConfig | None = None
    segment: SegmentConfig | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> PipelineConfig:
        for f in fields(self):
            part = getattr(self, f.name)
            if part is not None:
                for fld in fields(part):  # the Python API gets the type checks of numbers and switches
                    if "str" not in str(fld.type):  # (paths, CRS objects... are the validators' business)
                        check_type(getattr(part, fld.name), fld.type, _opt(_CLI_NAMES.get(fld.name, fld.name)))
                part.validate()
        return self

    def replace(self, **parts) -> PipelineConfig:
        """A copy with whole parts or ``section__field`` values replaced, e.g. ``output__resume=True``."""
        direct = {k: v for k, v in parts.items() if "__" not in k}
        cfg = dataclasses.replace(self, **direct)
        nested: dict[str, dict] = {}
        for k, v in parts.items():
            if "__" in k:
                sec, name = k.split("__", 1)
                nested.setdefault(sec, {})[name] = v
        for sec, values in nested.items():
            cur = getattr(cfg, sec)
            if cur is None:
                cur = _SECTIONS[sec]()
            cfg = dataclasses.replace(cfg, **{sec: dataclasses.replace(cur, **values)})
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            part = getattr(self, f.name)
            out[f.name] = None if part is None else {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(part).items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PipelineConfig:
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}")
        parts: dict[str, Any] = {}
        for sec, kind in _SECTIONS.items():
            if sec not in data:
                continue
            values = data[sec]
            if values is None or values is False:
                parts[sec] = None
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{sec}] must be a table")
            names = {f.name for f in fields(kind)}
            bad = set(values) - names
            if bad:
                raise ConfigError(f"{source}: unknown option(s) {sorted(bad)} in [{sec}]; known: {sorted(names)}")
            types = {f.name: f.type for f in fields(kind)}
            for k, v in values.items():
                check_type(v, types[k], f"{source}: [{sec}] {k}")
            values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
            parts[sec] = kind(**values)
        return cls(**parts)

    def to_toml(self) -> str:
        """TOML text; a section that is off is written as ``enabled = false``."""
        lines = []
        for sec, values in self.to_dict().items():
            lines.append(f"[{sec}]")
            if values is None:
                lines.append("enabled = false")
            else:
                for k, v in values.items():
                    if v is not None:
                        lines.append(f"{k} = {toml_value(v)}")
            lines.append("")
        return "\n".join(lines)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> PipelineConfig:
        p = Path(path)
        data = read_toml(p, "--config")
        for sec, values in list(data.items()):
            if isinstance(values, dict) and "enabled" in values:
                check_type(values["enabled"], "bool", f"{p}: [{sec}] enabled")
            if isinstance(values, dict) and values.get("enabled", True) is False:
                data[sec] = None
            elif isinstance(values, dict):
                values.pop("enabled", None)
        return cls.from_dict(data, source=str(p))


_SECTIONS = {"tiling": TilingConfig, "detect": DetectConfig, "masks": MaskConfig, "segment": SegmentConfig,
             "execution": ExecutionConfig, "output": OutputConfig}


# field -> the CLI option's name where they differ (messages name what users type)
_CLI_NAMES = {"tile_size": "tile", "simplify_px": "simplify", "engine": "sam", "multipart": "all_parts",
              "use_gate": "no_gate"}

_TYPE_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a text in quotes",
               "tuple[int, ...]": "a list of integers, e.g. [4, 3, 2]", "ints": "a list of integers, e.g. [4, 3, 2]",
               "path": "a path in quotes", "paths": "a list of paths in quotes", "strs": "a list of texts in quotes",
               "renames": 'a table of texts, e.g. {Tree = "tree"}'}


def _type_ok(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind in ("tuple[int, ...]", "ints"):
        return isinstance(value, list | tuple) and all(_type_ok(v, "int") for v in value)
    if kind == "path":
        return isinstance(value, str | os.PathLike)
    if kind in ("paths", "strs"):
        return isinstance(value, list | tuple) and all(isinstance(v, str | os.PathLike) for v in value)
    if kind == "renames":
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return True  # a type this check does not know: validate() decides


def check_type(value, annotation: str, where: str) -> None:
    """Values from TOML (or Python) typed like the CLI options: ``overwrite = "false"`` is not false.

    ``annotation``: a field's annotation as text (``"int | None"``) or one of the kinds of the training data
    (``path``, ``paths``, ``strs``, ``ints``, ``renames``); ``None`` among them: the value may be left out."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None and "None" in kinds:
        return
    optional = "None" in kinds
    kinds = [k for k in kinds if k != "None"]
    if not any(_type_ok(value, k) for k in kinds):
        expected = " or ".join(_TYPE_WORDS.get(k, k) for k in kinds) + (" (or leave it out)" if optional else "")
        try:
            shown = toml_value(value)
        except Exception:  # noqa: BLE001 - an object TOML cannot hold (Python API)
            shown = repr(value)
        raise ConfigError(f"{where} = {shown}: expected {expected}")


def _unit(option: str, value) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value) or not 0 <= value <= 1:
        raise ConfigError(f"{option} must be within [0, 1], got {value!r}")


def toml_value(v: Any) -> str:
    """``v`` as a TOML value; None (TOML has no null) is written as ``"none"``, table keys are quoted (a class
    name may hold spaces or dots)."""
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def read_toml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The tables of a TOML file; every reason it cannot be read is a ConfigError naming the file and ``what``
    it was given as (``"--config"``, ``"the training config"``)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: {what} is a folder; give a TOML file (see --save-config)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: {what} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: {what} is not a text file; give a TOML file (see --save-config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {what} is not valid TOML: {exc}") from None


def save_toml(path: str | os.PathLike, text: str, option: str = "--save-config") -> Path:
    """Write TOML ``text`` to ``path`` through a temporary file (never a half-written file), in a folder that
    exists; every reason it cannot be written is an OutputError naming ``option``."""
    from geors.errors import OutputError

    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: {option} is a folder; give a .toml file path.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{p}: {option}: the folder {parent} does not exist; create it first.")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{p}: {option} cannot be written: {exc.strerror or exc}") from None
    return p
