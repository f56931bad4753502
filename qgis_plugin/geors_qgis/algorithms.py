"""Processing algorithms: one per ``geors`` command, each a thin shell that runs the CLI in a subprocess."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from . import options as O
from .environment import EnvironmentNotFound, GeorsEnvironment, Probe, model_info, models_list
from .install_check import NOT_FOUND_HELP
from .layer_export import SceneExports, export_parameters
from .layers import LabelRasterStyler, load_results_on_completion
from .runner import RunResult, resume_args, run_geors
from .settings import configured_environment

ICON = str(Path(__file__).with_name("icon.png"))
VECTOR_FORMATS = ["gpkg", "shp", "geojson", "json", "fgb", "gml", "kml", "sqlite", "tab", "mif"]


@dataclass
class ProviderInfo:
    """What the provider learnt about the geors environment when it loaded (shared by its algorithms)."""

    env: GeorsEnvironment | None = None
    probe: Probe | None = None
    model: dict | None = None  # `geors models info DEFAULT --json` of the default detector
    description: dict | None = None  # every command's options, from the environment's click objects
    segment_help: list[dict] = field(default_factory=list)
    segment_usage: str = ""
    segment_has_progress: bool = False

    @property
    def model_metadata(self) -> dict | None:
        if not self.model:
            return None
        return self.model.get("metadata") or self.model


def _environment() -> GeorsEnvironment:
    try:
        from .environment import find_environment

        return find_environment(configured_environment())
    except EnvironmentNotFound as exc:
        raise QgsProcessingException(f"{exc}\n\n{NOT_FOUND_HELP}") from None


class GeorsAlgorithm(QgsProcessingAlgorithm):
    """Base class: options from :mod:`options`, execution through :func:`runner.run_geors`."""

    command: tuple[str, ...] = ()
    display: str = ""
    group_id = "pipeline"
    group_name = "Pipeline"
    description = ""
    opts: tuple[O.Opt, ...] = ()  # this plugin's table, used when the environment cannot describe its CLI
    skip: tuple[str, ...] = ()  # CLI options set through dedicated parameters
    jsonl_fallback = True  # whether the command has --progress, when the environment cannot tell

    def __init__(self, info: ProviderInfo | None = None):
        super().__init__()
        self.info = info or ProviderInfo()

    def createInstance(self):  # noqa: N802
        return type(self)(self.info)

    def name(self):
        return "_".join(self.command)

    def displayName(self):  # noqa: N802
        return self.display

    def group(self):
        return self.group_name

    def groupId(self):  # noqa: N802
        return self.group_id

    def icon(self):
        return QIcon(ICON)

    def shortHelpString(self):  # noqa: N802
        return (f"{self.description}\n\nRuns <b>geors {' '.join(self.command)}</b> in the configured geors "
                "environment (a separate Python with torch; QGIS itself never loads it). Every parameter is one "
                "command-line option of the same name (SCORE_THRESHOLD = --score-threshold); values left at "
                "their default are not passed, so the model's own tile size, overlap and gate threshold apply.\n\n"
                "A raster layer that is not a file (WMS/XYZ, virtual, in-memory, database) is first exported to a "
                "temporary GeoTIFF for EXTENT at RESOLUTION (advanced parameters; a web map needs EXTENT), "
                "which is removed afterwards unless KEEP_EXPORT is set.")

    @property
    def cli_key(self) -> str:
        return " ".join(self.command)

    @property
    def jsonl(self) -> bool:
        return O.has_option(self.info.description, self.cli_key, "--progress", self.jsonl_fallback)

    def options(self) -> tuple[O.Opt, ...]:
        return O.opts_from_description(self.info.description, self.cli_key, self.opts, self.skip)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        """Runs :meth:`process`; the scenes exported from layers that are not files are removed afterwards."""
        self.exports = SceneExports(self, parameters, context, feedback)
        try:
            return self.process(parameters, context, feedback)
        finally:
            self.exports.finish()

    def process(self, parameters, context, feedback) -> dict:
        raise NotImplementedError

    def scene_file(self, layer, param: str) -> str:
        """The raster file geors reads for ``layer``: its own file, or a temporary GeoTIFF exported for the
        EXTENT at the RESOLUTION when it is not a file (layer_export.py)."""
        return self.exports.path(layer, param)

    def add_options(self):
        """The command's options, then how layers that are not files are exported (plugin-only, advanced)."""
        self._add_cli_options()
        for p in export_parameters():
            self.addParameter(p)

    def _add_cli_options(self):
        for o in self.options():
            self.addParameter(o.parameter())
            if o.flag == O.SAM.flag:  # --sam also takes a checkpoint file, which a list of engines cannot hold
                p = QgsProcessingParameterFile(O.SAM_CHECKPOINT, "SAM checkpoint file (replaces the mask engine)",
                                               QgsProcessingParameterFile.File, "", None, True,
                                               "SAM checkpoint (*.pth *.pt)")
                p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
                p.setHelp("--sam PATH: a SAM checkpoint file (vit_b/l/h or MobileSAM vit_t).")
                self.addParameter(p)

    def option_args(self, parameters, context) -> list[str]:
        """Command-line arguments of the dialog's options (a SAM checkpoint file replaces the engine choice)."""
        args = O.option_args(self.options(), self.option_values(parameters, context))
        if O.SAM_CHECKPOINT in parameters and parameters.get(O.SAM_CHECKPOINT):
            path = self.parameterAsFile(parameters, O.SAM_CHECKPOINT, context)
            if path:
                if O.SAM.flag in args:
                    i = args.index(O.SAM.flag)
                    del args[i:i + 2]
                args += [O.SAM.flag, path]
        return args

    def option_values(self, parameters, context) -> dict:
        values = {}
        for o in self.options():
            raw = parameters.get(o.name)
            if raw is None or raw == "" or (hasattr(raw, "isNull") and raw.isNull()):
                continue
            if o.kind == "bool":
                values[o.name] = self.parameterAsBool(parameters, o.name, context)
            elif o.kind == "int":
                values[o.name] = self.parameterAsInt(parameters, o.name, context)
            elif o.kind == "float":
                values[o.name] = self.parameterAsDouble(parameters, o.name, context)
            elif o.kind == "enum":
                values[o.name] = self.parameterAsEnumString(parameters, o.name, context)
            elif o.kind == "file":
                values[o.name] = self.parameterAsFile(parameters, o.name, context)
            else:
                values[o.name] = self.parameterAsString(parameters, o.name, context)
        return values

    def run_cli(self, args: list[str], feedback, n_scenes: int = 1, output: str | None = None) -> RunResult:
        """Run ``geors ARGS`` with progress; turn cancel and failure into messages that say what to do."""
        env = _environment()
        full = [*args, "--progress", "jsonl"] if self.jsonl else list(args)
        self.exports.cli_started = True
        result = run_geors(env, full, feedback, n_scenes=n_scenes)
        if result.cancelled:
            msg = "Cancelled."
            if output and "--resume" in self.option_flags():
                msg += (f" {output} is a valid GeoPackage with every batch finished before the stop. "
                        f"Continue the run with:\n\n    {env.display(resume_args(args))}\n\n"
                        "or run this algorithm again on the same output with 'Resume' checked.")
            feedback.pushWarning(msg)
            raise QgsProcessingException(msg)
        if result.returncode != 0:
            detail = "\n".join(result.errors) or "\n".join(result.stderr_tail[-15:])
            kind = "bad input" if result.returncode == 2 else "failure while processing"
            raise QgsProcessingException(f"geors {' '.join(self.command)} stopped ({kind}, exit code "
                                         f"{result.returncode}):\n{detail}")
        return result

    def option_flags(self) -> set[str]:
        return {o.flag for o in self.options()}


class _GpkgOutputAlgorithm(GeorsAlgorithm):
    """Commands that write GeoPackage layers: adds OUTPUT and loads the result layers grouped per run."""

    result_outputs = ("detections", "instances")

    def add_gpkg_output(self):
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Output GeoPackage",
                                                                "GeoPackage (*.gpkg *.GPKG)"))
        for name in self.result_outputs:
            self.addOutput(QgsProcessingOutputVectorLayer(name.upper(), f"{name} layer"))

    def finish(self, result: RunResult, out: str, existed: bool, resume: bool, context, label: str,
               metadata: dict | None = None) -> dict:
        summary = result.parsed_stdout() or {}
        run_id = summary.get("run_id")
        group = f"geors {' '.join(self.command)}: {label}" + (f" ({run_id})" if run_id else "")
        # A new file shows everything; an appended one only this run's rows (a resumed run shows all).
        only_run = run_id if existed and not resume else None
        uris = load_results_on_completion(context, out, group, metadata or self.info.model_metadata, only_run)
        outputs = {"OUTPUT": out, "SUMMARY": json.dumps(summary)}
        for name in self.result_outputs:
            outputs[name.upper()] = uris.get(name)
        return outputs


class _SceneListMixin:
    def add_scenes(self):
        self.addParameter(QgsProcessingParameterMultipleLayers("SCENES", "Scenes (raster layers)",
                                                               QgsProcessing.TypeRaster))

    def scene_paths(self, parameters, context) -> list[str]:
        layers = self.parameterAsLayerList(parameters, "SCENES", context)
        if not layers:
            raise QgsProcessingException("SCENES: give at least one raster layer.")
        self.exports.reserve_file_names(layers)
        return [self.scene_file(lyr, "SCENES") for lyr in layers]


class DetectAlgorithm(_SceneListMixin, _GpkgOutputAlgorithm):
    command = ("detect",)
    display = "Detect objects"
    description = ("Gate every tile, detect objects on tiles that pass; writes the 'detections' layer (boxes in the "
                   "scene's CRS) of the output GeoPackage. With a minimum score below the score threshold, boxes "
                   "scoring down to it are written too (passes_threshold 0, grey and unticked in the legend) so "
                   "AP can be computed over every score. Interrupted runs continue with 'Resume'.")
    opts = O.TABLES["detect"]
    result_outputs = ("detections",)

    def options(self):
        return O.with_model_defaults(super().options(), self.info.model_metadata)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_scenes()
        self.add_options()
        self.add_gpkg_output()
        self.addOutput(QgsProcessingOutputString("SUMMARY", "Summary (JSON)"))

    def process(self, parameters, context, feedback):
        scenes = self.scene_paths(parameters, context)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        values = self.option_values(parameters, context)
        existed = os.path.exists(out)
        args = [*self.command, *scenes, "-o", out, *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback, n_scenes=len(scenes), output=out)
        label = Path(scenes[0]).stem + (f" +{len(scenes) - 1}" if len(scenes) > 1 else "")
        return self.finish(result, out, existed, bool(values.get("RESUME")), context, label)


class RunAlgorithm(DetectAlgorithm):
    command = ("run",)
    display = "Run pipeline (detect + masks)"
    description = ("The full pipeline: gate -> detect -> masks (SAM when its checkpoint is found, else the "
                   "weight-free watershed outline, which keeps the box where an outline is implausible; or "
                   "GrabCut / the box). Writes 'detections' and 'instances' layers. Interrupted runs continue "
                   "with 'Resume'.")
    opts = O.TABLES["run"]
    result_outputs = ("detections", "instances", "segmentation")


class MasksAlgorithm(_GpkgOutputAlgorithm):
    command = ("masks",)
    display = "Masks from boxes"
    group_id, group_name = "boxes", "From boxes"
    description = ("Outline the objects in a box layer (any CRS; rotated boxes become their circumscribed box) on "
                   "the scene with the chosen mask engine (auto: SAM when its checkpoint is found, else the "
                   "weight-free watershed outline); writes the 'instances' layer. Each tile is read once; with "
                   "SAM its boxes share one image embedding.")
    opts = O.TABLES["masks"]
    skip = ("--boxes", "--layer")
    jsonl_fallback = False
    result_outputs = ("instances",)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("SCENE", "Scene (raster layer)"))
        self.addParameter(QgsProcessingParameterFeatureSource("BOXES", "Boxes",
                                                              [QgsProcessing.TypeVectorPolygon]))
        self.add_options()
        self.add_gpkg_output()
        self.addOutput(QgsProcessingOutputString("SUMMARY", "Summary (JSON)"))

    def boxes_args(self, parameters, context, feedback) -> list[str]:
        path, layer = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, "BOXES", context, VECTOR_FORMATS, "gpkg", feedback)
        return ["--boxes", path] + (["--layer", layer] if layer else [])

    def process(self, parameters, context, feedback):
        scene = self.scene_file(self.parameterAsRasterLayer(parameters, "SCENE", context), "SCENE")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        existed = os.path.exists(out)
        args = [*self.command, scene, *self.boxes_args(parameters, context, feedback), "-o", out,
                *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback, output=out)
        return self.finish(result, out, existed, False, context, Path(scene).stem)


class LabelAlgorithm(MasksAlgorithm):
    command = ("label",)
    display = "Label raster from boxes (SAMRS)"
    description = ("Write a label raster for the scene from boxes: same grid and CRS, uint8 class ids, "
                   "255 = unlabelled. Boxes become masks with the chosen engine (the SAMRS idea).")
    opts = O.TABLES["label"]
    skip = ("--boxes", "--layer", "--instances")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("SCENE", "Scene (raster layer)"))
        self.addParameter(QgsProcessingParameterFeatureSource("BOXES", "Boxes",
                                                              [QgsProcessing.TypeVectorPolygon]))
        self.add_options()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Label raster"))
        self.addParameter(QgsProcessingParameterRasterDestination("INSTANCES", "Instance-id raster (uint32)",
                                                                  None, True, False))
        self.addOutput(QgsProcessingOutputString("SUMMARY", "Summary (JSON)"))

    def process(self, parameters, context, feedback):
        scene = self.scene_file(self.parameterAsRasterLayer(parameters, "SCENE", context), "SCENE")
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        inst = self.parameterAsOutputLayer(parameters, "INSTANCES", context)
        args = [*self.command, scene, *self.boxes_args(parameters, context, feedback), "-o", out,
                *(["--instances", inst] if inst else []),
                *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback)
        if context.willLoadLayerOnCompletion(out):
            context.layerToLoadOnCompletionDetails(out).setPostProcessor(
                LabelRasterStyler.create(self.info.model_metadata))
        return {"OUTPUT": out, "INSTANCES": inst or None, "SUMMARY": json.dumps(result.parsed_stdout() or {})}


class InfoAlgorithm(GeorsAlgorithm):
    command = ("info",)
    display = "Scene info"
    group_id, group_name = "scene", "Scene"
    description = "Size, bands, dtype, CRS, pixel size, nodata, tile count and a memory estimate of a raster."
    opts = O.TABLES["info"]
    skip = ("--json",)
    jsonl_fallback = False

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("SCENE", "Scene (raster layer)"))
        self.add_options()
        self.addOutput(QgsProcessingOutputString("INFO", "Scene info (JSON)"))

    def process(self, parameters, context, feedback):
        scene = self.scene_file(self.parameterAsRasterLayer(parameters, "SCENE", context), "SCENE")
        args = [*self.command, scene, "--json", *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback)
        return {"INFO": json.dumps(result.parsed_stdout() or {})}


class TilesAlgorithm(_GpkgOutputAlgorithm):
    command = ("tiles",)
    display = "Tile grid"
    group_id, group_name = "scene", "Scene"
    description = ("Write the tile footprints ('tiles', with nodata fraction and brightness) and their cores "
                   "('tile_cores': each object belongs to the tile whose core holds its box centre).")
    opts = O.TABLES["tiles"]
    result_outputs = ("tiles", "tile_cores")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("SCENE", "Scene (raster layer)"))
        self.add_options()
        self.add_gpkg_output()

    def process(self, parameters, context, feedback):
        scene = self.scene_file(self.parameterAsRasterLayer(parameters, "SCENE", context), "SCENE")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        existed = os.path.exists(out)
        args = [*self.command, scene, "-o", out, *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback, output=out)
        return self.finish(result, out, existed, False, context, Path(scene).stem)


def _file_of_layer(layer, param: str) -> str:
    """The file behind a vector or raster layer (training labels must be files the CLI can read)."""
    path = layer.source().split("|")[0]
    if layer.providerType() not in ("ogr", "gdal") or not os.path.isfile(path):
        raise QgsProcessingException(f"{param}: the layer '{layer.name()}' is not a file on disk; save it (e.g. as "
                                     "GeoPackage or GeoTIFF) first.")
    return path


class _TrainAlgorithm(GeorsAlgorithm):
    """``geors train ...``: scenes and one label layer per scene, a time budget, a model file."""

    group_id, group_name = "training", "Training"
    skip = ("--scene", "--labels")
    labels_title = "Labels, one layer per scene (same order)"
    labels_type = QgsProcessing.TypeVectorPolygon

    def shortHelpString(self):  # noqa: N802
        return (super().shortHelpString() + "\n\nThe time budget (MAX_MINUTES, default 10) is the schedule: the step "
                "time is measured and the steps and learning rate are planned to use it; 0 = the fixed schedule of "
                "the step options. The task's progress bar follows the planned steps and shows the time left.")

    def add_training_inputs(self):
        self.addParameter(QgsProcessingParameterMultipleLayers("SCENES", "Training scenes (raster layers)",
                                                               QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterMultipleLayers("LABELS", self.labels_title, self.labels_type))

    def add_model_output(self):
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Model file",
                                                                "geors model (*.safetensors)"))
        self.addOutput(QgsProcessingOutputString("SUMMARY", "Summary (JSON)"))

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_training_inputs()
        self.add_options()
        self.add_model_output()

    def scene_label_args(self, parameters, context) -> list[str]:
        layers = self.parameterAsLayerList(parameters, "SCENES", context)
        self.exports.reserve_file_names(layers)
        scenes = [self.scene_file(lyr, "SCENES") for lyr in layers]
        labels = self.parameterAsLayerList(parameters, "LABELS", context)
        if not scenes or len(scenes) != len(labels):
            raise QgsProcessingException(f"Give one label layer per scene ({len(scenes)} scenes, "
                                         f"{len(labels)} label layers).")
        pairs = []
        for scene, lab in zip(scenes, labels):  # noqa: B905 (lengths checked; QGIS 3.22 may run Python 3.9)
            pairs += ["--scene", scene, "--labels", _file_of_layer(lab, "LABELS")]
        return pairs

    def extra_args(self, parameters, context) -> list[str]:
        return []

    def process(self, parameters, context, feedback):
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        args = [*self.command, *self.scene_label_args(parameters, context), "-o", out,
                *self.extra_args(parameters, context), *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback)
        return {"OUTPUT": out, "SUMMARY": json.dumps(result.parsed_stdout() or {})}


class TrainDetectorAlgorithm(_TrainAlgorithm):
    command = ("train", "detector")
    display = "Train detector"
    description = ("Train the R2-CNN gate + detector on scenes and matching box labels (the n-th label layer goes "
                   "with the n-th scene). 20% of the objects are held back in spatial blocks to validate and to "
                   "calibrate the gate and score thresholds. Writes a .safetensors model usable as MODEL in "
                   "Detect / Run.")
    opts = O.TABLES["train detector"]
    skip = ("--scene", "--labels", "--corrections", "--reviewed-area")  # the last two: Retrain from corrections
    labels_title = "Box labels, one layer per scene (same order)"
    jsonl_fallback = True  # geors train detector has --progress jsonl since the time budget became the schedule

    def name(self):
        return "train_detector"


class TrainSegmenterAlgorithm(_TrainAlgorithm):
    command = ("train", "segmenter")
    display = "Train segmenter"
    description = ("Train a C2FNet segmenter (coarse network, then the fine network on windows of the small "
                   "classes) on scenes and matching labels: polygon layers (the objects; every other pixel of "
                   "the scene, or of the labelled area when given, is the background class) or label rasters "
                   "(class ids, 255 = unlabelled, e.g. from 'Label raster from boxes'). A one-class polygon "
                   "layer needs the background it implies: leave 'Pixels no label covers' at auto. Writes a "
                   ".safetensors model usable as SEGMENTER in Segment scene / Run.")
    opts = O.TABLES["train segmenter"]
    skip = ("--scene", "--labels", "--labelled-area")
    labels_title = "Labels, one per scene (same order): polygon layers or label rasters"
    labels_type = QgsProcessing.TypeMapLayer
    jsonl_fallback = False  # no --progress today: the step log lines on stderr carry the ETA

    def name(self):
        return "train_segmenter"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_training_inputs()
        self.add_options()
        if O.has_option(self.info.description, self.cli_key, "--labelled-area", True):
            self.addParameter(QgsProcessingParameterFeatureSource(
                "LABELLED_AREA", "Labelled area (polygons where the labels are complete; empty = whole scene)",
                [QgsProcessing.TypeVectorPolygon], None, True))
        self.add_model_output()

    def extra_args(self, parameters, context) -> list[str]:
        if not parameters.get("LABELLED_AREA"):
            return []
        layer = self.parameterAsVectorLayer(parameters, "LABELLED_AREA", context)
        if layer is None:
            raise QgsProcessingException("LABELLED_AREA: not a vector layer.")
        return ["--labelled-area", _file_of_layer(layer, "LABELLED_AREA")]


class SegmentAlgorithm(_SceneListMixin, _GpkgOutputAlgorithm):
    """``geors segment``: listed only when the environment's CLI has it; options read from its ``--help``."""

    command = ("segment",)
    display = "Segment scene"
    description = "Semantic segmentation (C2FNet): writes the 'segmentation' layer, coloured by class."
    result_outputs = ("segmentation",)

    def options(self):
        fallback = O.opts_from_help(self.info.segment_help, skip=("--output", "--progress"))
        return O.opts_from_description(self.info.description, "segment", fallback)

    @property
    def jsonl(self) -> bool:
        return O.has_option(self.info.description, "segment", "--progress", self.info.segment_has_progress)

    def takes_scene_list(self) -> bool:
        cmd = (self.info.description or {}).get("segment")
        if cmd:
            return any(p.get("argument") and p.get("nargs") == -1 for p in cmd["params"])
        return "SCENES..." in self.info.segment_usage or not self.info.segment_usage

    def initAlgorithm(self, config=None):  # noqa: N802
        if self.takes_scene_list():
            self.add_scenes()
        else:
            self.addParameter(QgsProcessingParameterRasterLayer("SCENE", "Scene (raster layer)"))
        self.add_options()
        self.add_gpkg_output()
        self.addOutput(QgsProcessingOutputString("SUMMARY", "Summary (JSON)"))

    def process(self, parameters, context, feedback):
        if "SCENES" in parameters:
            scenes = self.scene_paths(parameters, context)
        else:
            scenes = [self.scene_file(self.parameterAsRasterLayer(parameters, "SCENE", context), "SCENE")]
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        values = self.option_values(parameters, context)
        existed = os.path.exists(out)
        args = [*self.command, *scenes, "-o", out, *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback, n_scenes=len(scenes), output=out)
        return self.finish(result, out, existed, bool(values.get("RESUME")), context, Path(scenes[0]).stem,
                           self.segmenter_metadata(values.get("SEGMENTER")))

    def segmenter_metadata(self, name: str | None) -> dict | None:
        """The segmenter's metadata (class names and colours) for styling, or None."""
        env = _environment()
        if not name:
            rows = models_list(env) or []
            # (models list marks every built-in "detector" today; the segmenter is the c2fnet one)
            name = next((r["name"] for r in rows if r.get("kind") in ("segmenter", "c2fnet")
                         or "c2fnet" in str(r.get("name", ""))), None)
        info = model_info(env, name) if name else None
        return (info or {}).get("metadata") or info


ALGORITHMS = (RunAlgorithm, DetectAlgorithm, MasksAlgorithm, LabelAlgorithm, TrainDetectorAlgorithm,
              TrainSegmenterAlgorithm, InfoAlgorithm, TilesAlgorithm)
"""Always listed; :class:`SegmentAlgorithm` is added when the environment's CLI has ``segment``; the Setup group
(Check installation, Set up environment) is in :mod:`setup_algorithm`."""
