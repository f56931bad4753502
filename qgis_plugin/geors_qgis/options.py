"""CLI options as Processing parameters, one to one, and back to command-line arguments.

Each :class:`Opt` is one ``geors`` option. Its Processing parameter is named
after the flag (``--score-threshold`` -> ``SCORE_THRESHOLD``). A value left at
its default is not passed, so the command line stays minimal and options whose
default comes from the model (tile size, overlap, gate threshold) follow the
model that is actually chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

# qgis.core is imported where a parameter is made (Opt.parameter), so the option tables and their
# translation from the CLI's description can be tested against the CLI without QGIS (tests/test_qgis_dialogs.py).


@dataclass(frozen=True)
class Opt:
    """One CLI option.

    Attributes:
        flag: the option, e.g. ``--tile``.
        kind: ``int``, ``float``, ``str``, ``bool`` (a switch), ``enum`` or ``file`` (an input file).
        label: what the dialog shows.
        default: the CLI's default (or the model's, filled in at load time); ``None`` = not given.
        choices: values of an ``enum``.
        advanced: shown under "Advanced parameters".
        help: tooltip / help text (the CLI's help).
        off_flag: for a ``--x/--no-x`` switch, the ``--no-x`` form.
        required: the CLI requires it (the dialog cannot be run without a value).

    ``kind`` may also be ``multi``: a repeatable option, values separated by ``;``.
    """

    flag: str
    kind: str
    label: str
    default: object = None
    choices: tuple[str, ...] = ()
    advanced: bool = False
    help: str = ""
    off_flag: str = ""  # a switch's negative form (--gate/--no-gate), passed when a default-on switch is unset
    required: bool = False

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_").upper()

    def with_default(self, value) -> Opt:
        return replace(self, default=value)

    def parameter(self):
        """The Processing parameter (a ``QgsProcessingParameterDefinition``) of this option."""
        from qgis.core import (
            QgsProcessingParameterBoolean,
            QgsProcessingParameterDefinition,
            QgsProcessingParameterEnum,
            QgsProcessingParameterFile,
            QgsProcessingParameterNumber,
            QgsProcessingParameterString,
        )

        optional = not self.required and (self.default is None or self.kind in ("bool", "str", "file", "multi"))
        if self.kind == "bool":
            p = QgsProcessingParameterBoolean(self.name, self.label, bool(self.default))
        elif self.kind in ("int", "float"):
            typ = QgsProcessingParameterNumber.Integer if self.kind == "int" else QgsProcessingParameterNumber.Double
            p = QgsProcessingParameterNumber(self.name, self.label, typ, self.default, optional)
        elif self.kind == "enum":
            p = QgsProcessingParameterEnum(self.name, self.label, list(self.choices), False, self.default,
                                           optional, True)
        elif self.kind == "file":
            p = QgsProcessingParameterFile(self.name, self.label, QgsProcessingParameterFile.File, "", None, optional)
        else:
            p = QgsProcessingParameterString(self.name, self.label, self.default, False, optional)
        if self.advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        if self.help:
            p.setHelp(f"{self.flag}: {self.help}")
        return p

    def args(self, value) -> list[str]:
        """Command-line arguments for ``value`` (nothing when it is empty or the default)."""
        if value is None or value == "":
            return []
        if self.kind == "bool":
            if value and not self.default:
                return [self.flag]
            return [self.off_flag] if not value and self.default and self.off_flag else []
        if self.kind == "multi":
            return [a for v in str(value).split(";") if v.strip() for a in (self.flag, v.strip())]
        if self.kind == "enum" and isinstance(value, int) and not isinstance(value, bool):
            value = self.choices[value]
        if self.default is not None and _same(value, self.default, self.kind):
            return []
        if self.kind == "int":
            value = int(value)
        return [self.flag, str(value)]


def _same(a, b, kind: str) -> bool:
    if kind in ("int", "float"):
        try:
            return abs(float(a) - float(b)) < 1e-12
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def option_args(opts, values: dict) -> list[str]:
    """Arguments for every option in ``opts`` from ``values`` (parameter name -> value)."""
    out: list[str] = []
    for o in opts:
        out += o.args(values.get(o.name))
    return out


# --- the options of each command, as `geors CMD --help` lists them ---------------------------------

DEVICE = Opt("--device", "enum", "Device", "auto", ("auto", "cpu", "cuda"), True,
             "auto = CUDA when torch sees a GPU, else CPU.")
TRAIN_DEVICE = Opt("--device", "str", "Device (auto, cpu or cuda)", "auto", (), True, "auto, cpu or cuda.")
BANDS = Opt("--bands", "str", "Bands (comma-separated, 1-based, e.g. 4,3,2)", None, (), False,
            "Default: red/green/blue colour interpretation, else the first three.")
TILE = Opt("--tile", "int", "Tile size D (pixels; empty = the model's)", None, (), True, "Tile size D, pixels.")
OVERLAP = Opt("--overlap", "int", "Overlap d (pixels, >= largest object; empty = the model's)", None, (), True,
              "Overlap d between neighbouring tiles, pixels (>= largest object).")

MASK_ENGINES = ("auto", "box", "grabcut", "watershed", "vit_b", "vit_l", "vit_h", "vit_t")
"""The mask engines ``--sam`` takes (a SAM checkpoint path aside), when the environment cannot list its own
(``environment.describe`` reads them from the geors mask engine classes and ``SAM_KINDS``)."""

SAM = Opt("--sam", "enum", "Mask engine (auto = SAM vit_b when its checkpoint is found, else watershed)", "auto",
          MASK_ENGINES, False,
          "auto = SAM vit_b when its checkpoint is found, else the weight-free watershed outline (the box where "
          "an outline is implausible); watershed, grabcut and box need no weights; vit_b/l/h/t = SAM (a "
          "checkpoint from 'geors models download sam-vit_b' or $GEORS_SAM_CHECKPOINT). A checkpoint file "
          "given as 'SAM checkpoint file' replaces this choice.")
SAM_CHECKPOINT = "SAM_CHECKPOINT"
"""Parameter of the algorithms with ``--sam``: a SAM checkpoint file, passed as ``--sam PATH``."""

MIN_SCORE = Opt("--min-score", "float", "Also write detections down to this score (greyed, hidden; for AP)", None,
                (), False, "Also write detections scoring down to S with passes_threshold = 0: unticked grey "
                "boxes in QGIS, so geors eval can compute AP over every score.")
MAX_MINUTES = Opt("--max-minutes", "float", "Time budget, minutes (the schedule is planned to use it; 0 = fixed "
                  "schedule)", 10.0, (), False,
                  "Time budget for the whole training, validation included; 0 = no budget (a fixed schedule).")

DETECT = (
    Opt("--model", "str", "Model (name or .safetensors file; empty = built-in tree model)", None, (), False,
        "Model name or file (default: the built-in tree model)."),
    TILE,
    OVERLAP,
    BANDS,
    Opt("--gate-threshold", "float", "Gate threshold P (tiles below skip the detector)", None, (), True,
        "Tiles with gate probability below P skip the detector (default: the model's)."),
    Opt("--no-gate", "bool", "No gate: run the detector on every tile", False, (), False,
        "Run the detector on every tile."),
    Opt("--score-threshold", "float", "Minimum detection score", 0.3, (), False, "Minimum detection score written."),
    MIN_SCORE,
    DEVICE,
    Opt("--batch-size", "int", "Tiles per model call (empty = 2 on CPU, 8 on a GPU)", None, (), True,
        "Tiles per model call."),
    Opt("--workers", "int", "Workers (batches run concurrently)", 1, (), True,
        "Batches run concurrently (threads), or cluster workers with --scheduler local."),
    Opt("--scheduler", "str", "Dask scheduler (synchronous, local or tcp://HOST:PORT)", None, (), True,
        "Dask: 'synchronous', 'local' (start a LocalCluster) or tcp://HOST:PORT."),
    Opt("--resume", "bool", "Resume: skip tiles already in the output's ledger", False, (), False,
        "Skip tiles already in OUTPUT's ledger (geors_tiles)."),
)
RUN = (*DETECT, SAM)

MASKS = (
    Opt("--class-field", "str", "Class field of the boxes (default: 'class' or 'label')", None),
    SAM,
    DEVICE,
    Opt("--simplify", "float", "Simplification tolerance (pixels; empty = 0.5)", None, (), True),
    Opt("--all-parts", "bool", "Keep every part of a mask (MultiPolygon)", False, (), True),
    BANDS, TILE, OVERLAP,
)

LABEL = (
    Opt("--class-field", "str", "Class field of the boxes", None),
    Opt("--class-map", "file", "Class map (JSON {name: id} or CSV name,id; ids 0..254)", None),
    Opt("--order", "enum", "Paint order of overlapping instances", "larger_first",
        ("larger_first", "smaller_first", "input"), True),
    SAM, DEVICE, BANDS, TILE, OVERLAP,
)

INFO = (
    TILE, OVERLAP, BANDS,
    Opt("--batch-size", "int", "Tiles per model call (for the memory estimate)", 2, (), True),
    Opt("--workers", "int", "Workers (for the memory estimate)", 1, (), True),
    Opt("--stats", "bool", "Also estimate the scene-wide stretch (reads a sample)", False),
)

TILES = (
    TILE, OVERLAP, BANDS,
    Opt("--no-stats", "bool", "Skip reading pixels (no nodata fraction / brightness)", False),
)

# Training tables: the values that the trainers' engineers tune (learning rate, crop, batch, patience, ...)
# are left empty here, so the CLI's own default applies (an empty field is not passed) and this table cannot
# show a stale number when the environment cannot describe its CLI; the dialog built from the CLI shows them.
TRAIN = (
    Opt("--class-field", "str", "Class field of the labels", None),
    MAX_MINUTES,
    Opt("--steps", "int", "Fixed number of steps (empty = planned from the time budget)", None, (), True),
    Opt("--epochs", "int", "Fixed schedule: epochs (empty = planned from the time budget)", None, (), True),
    Opt("--steps-per-epoch", "int", "Batches per epoch with Epochs", None, (), True),
    Opt("--val-fraction", "float", "Share of the labelled objects held back for validation", None, (), True),
    Opt("--patience", "int", "Stop after this many validations without improvement (0 = never)", None, (), True),
    Opt("--batch-size", "int", "Batch size", None, (), True),
    Opt("--crop", "int", "Training crop size (pixels)", None, (), True),
    Opt("--lr", "float", "Learning rate", None, (), True),
    Opt("--assigner", "enum", "RPN label assignment", "nwd_rka", ("nwd_rka", "iou"), True),
    Opt("--gate-scale", "int", "Gate input pooling factor (1 = paper's gate)", 4, (), True),
    TRAIN_DEVICE,
    Opt("--seed", "int", "Random seed", 0, (), True),
    Opt("--allow-ungeoreferenced", "bool", "Accept images without CRS (pixel labels)", False, (), True),
    BANDS, TILE, OVERLAP,
)

TRAIN_SEGMENTER = (
    Opt("--class-field", "str", "Class field of polygon labels", None),
    Opt("--small-classes", "str", "Small-object classes refined by the fine network (comma-separated)", None, (),
        False, "Comma-separated small-object classes refined by the fine net.", required=True),
    Opt("--background", "str", "Background class name (pixels outside the polygons; empty = 'background')", None,
        (), False, "Name of the background class: pixels outside polygon labels."),
    Opt("--unlabelled", "enum", "Pixels no label covers", "auto", ("auto", "background", "ignore"), False,
        "auto = background for polygons, ignored for label rasters (255); ignore = never trained on (labels "
        "drawn only here and there)."),
    Opt("--classes", "str", "Class names of a label raster's ids, in order (comma-separated)", None, (), True),
    MAX_MINUTES,
    Opt("--val-fraction", "float", "Share of the labels held back for validation", None, (), True),
    Opt("--patience", "int", "Validations without improvement before a phase stops (0 = never)", None, (), True),
    Opt("--variant", "enum", "Network size (compact trains on a CPU; wide is for a GPU)", "compact",
        ("compact", "wide"), True),
    Opt("--coarse-steps", "int", "Coarse steps (without a budget; with one, the coarse:fine split)", None, (), True),
    Opt("--fine-steps", "int", "Fine steps (without a budget)", None, (), True),
    Opt("--batch-size", "int", "Batch size", None, (), True),
    Opt("--crop", "int", "Training crop size (pixels)", None, (), True),
    TRAIN_DEVICE,
    Opt("--seed", "int", "Random seed", 0, (), True),
    Opt("--allow-ungeoreferenced", "bool", "Accept images without CRS (labels on the same pixels)", False, (), True),
    BANDS,
)

TABLES: dict[str, tuple[Opt, ...]] = {"detect": DETECT, "run": RUN, "masks": MASKS, "label": LABEL, "info": INFO,
                                      "tiles": TILES, "train detector": TRAIN, "train segmenter": TRAIN_SEGMENTER}
"""This plugin's option table of each command it has an algorithm for (its fallback dialog)."""

KNOWN: dict[str, Opt] = {}
"""This plugin's labels and layout for the options it knows, by flag."""
for _table in TABLES.values():
    for _o in _table:
        KNOWN.setdefault(_o.flag, _o)

MODEL_DEFAULTS = {"--tile": "tile_size", "--overlap": "overlap", "--gate-threshold": "gate_threshold",
                  "--score-threshold": "score_threshold"}
"""Options whose default is read from the model metadata (``geors models info NAME --json``)."""


def with_model_defaults(opts, metadata: dict | None):
    """``opts`` with the model's tile size, overlap, gate and score thresholds as defaults (when known)."""
    if not metadata:
        return tuple(opts)
    out = []
    for o in opts:
        key = MODEL_DEFAULTS.get(o.flag)
        value = metadata.get(key) if key else None
        if value is not None:
            if o.kind == "float":
                value = round(float(value), 4)
            o = o.with_default(value)
        out.append(o)
    return tuple(out)


def opts_from_help(parsed: list[dict], skip: tuple[str, ...] = ("--output",)) -> tuple[Opt, ...]:
    """Options for a command known only from its ``--help`` (see ``environment.parse_help_options``)."""
    out = []
    for o in parsed:
        if o["flag"] in skip:
            continue
        meta, default = o["metavar"], o["default"]
        choice = re.fullmatch(r"\[(.+)\]", meta)
        if not meta:
            out.append(Opt(o["flag"], "bool", o["help"] or o["flag"], False, (), False, o["help"]))
        elif choice:
            choices = tuple(choice.group(1).split("|"))
            out.append(Opt(o["flag"], "enum", o["flag"].lstrip("-"), default if default in choices else None,
                           choices, False, o["help"]))
        elif meta == "INTEGER":
            out.append(Opt(o["flag"], "int", o["flag"].lstrip("-"), _num(default, int), (), False, o["help"]))
        elif meta == "FLOAT":
            out.append(Opt(o["flag"], "float", o["flag"].lstrip("-"), _num(default, float), (), False, o["help"]))
        else:
            out.append(Opt(o["flag"], "str", o["flag"].lstrip("-"), default, (), False, o["help"]))
    return tuple(out)


HANDLED = ("--output", "--progress", "--help")
"""Options every algorithm sets itself (OUTPUT parameter, progress protocol)."""

def opts_from_description(description: dict | None, command: str, fallback: tuple[Opt, ...],
                          skip: tuple[str, ...] = ()) -> tuple[Opt, ...]:
    """The options of ``geors COMMAND`` as the environment's CLI defines them (``environment.describe``).

    Known flags keep this plugin's label and layout; defaults, choices and any
    option this plugin does not know come from the CLI itself (unknown ones are
    shown under "Advanced parameters"), so the parameters match the installed
    geors one to one. Without a description, ``fallback`` (this plugin's table).
    """
    cmd = (description or {}).get(command)
    if not cmd:
        return fallback
    own = {o.flag: o for o in fallback}  # this command's own labels first (--batch-size differs per command)
    out = []
    for p in cmd["params"]:
        flag = p.get("flag")
        if not flag or flag in HANDLED or flag in skip or p.get("hidden"):
            continue
        help_text = " ".join(str(p.get("help") or "").split())
        default = p.get("default")
        if p.get("is_flag"):
            kind, default = "bool", bool(default)
        elif p.get("multiple"):
            kind, default = "multi", None
        elif p.get("type") == "choice":
            kind = "enum"
            default = default if default in p.get("choices", []) else None
        elif flag == SAM.flag:  # free text in the CLI (it also takes a checkpoint path): the engines as a list
            kind, default = "enum", "auto"
        elif p.get("type") in ("integer", "integer range"):  # click.IntRange is named "integer range"
            kind, default = "int", _num(default, int)
        elif p.get("type") in ("float", "float range"):
            kind, default = "float", _num(default, float)
        else:
            kind = "str"
            default = None if default in (None, "", "None") else str(default)
        known = own.get(flag) or KNOWN.get(flag)
        label = known.label if known else (help_text.split(". ")[0][:80] or flag.lstrip("-")) + f" ({flag})"
        choices = mask_engines(description) if flag == SAM.flag else tuple(p.get("choices") or ())
        if flag == SAM.flag:
            help_text = SAM.help
        out.append(Opt(flag, kind, label, default, choices,
                       known.advanced if known else True, help_text or (known.help if known else ""),
                       p.get("off_flag") or "", bool(p.get("required"))))
    return tuple(out)


def mask_engines(description: dict | None) -> tuple[str, ...]:
    """The ``--sam`` engine names of the environment (``environment.describe``'s ``__engines__``), ``auto``
    first; :data:`MASK_ENGINES` when the environment did not say."""
    names = list((description or {}).get("__engines__") or ())
    if not names:
        return MASK_ENGINES
    return tuple(["auto", *[n for n in names if n != "auto"]])


def has_option(description: dict | None, command: str, flag: str, fallback: bool) -> bool:
    cmd = (description or {}).get(command)
    if not cmd:
        return fallback
    return any(p.get("flag") == flag for p in cmd["params"])


def _num(value, typ):
    try:
        return typ(value)
    except (TypeError, ValueError):
        return None
