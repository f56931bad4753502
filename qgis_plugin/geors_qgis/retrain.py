"""*Retrain from corrections*: the analyst's loop in QGIS (issue 28).

After Detect objects / Run pipeline, edit the detections layer of the output GeoPackage (Toggle Editing:
delete the false positives, draw the missed objects; set ``passes_threshold`` to 1 to accept a grey
below-threshold box) and save the edits; optionally draw the area you reviewed as polygons (a layer
``reviewed_area`` in the same GeoPackage is found by itself). This algorithm runs

    geors train detector --corrections OUTPUT.gpkg [--reviewed-area AREA] --max-minutes M -o MODEL.safetensors

(the run's model fine-tuned: kept and drawn boxes are objects, deleted ones hard negatives, inside the reviewed
area) and then, when scenes are given, ``geors detect SCENES -o DETECTIONS --model MODEL``.
"""

from __future__ import annotations

import json
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterVectorLayer,
)

from . import options as O
from .algorithms import GeorsAlgorithm
from .layers import load_results_on_completion


def layer_file(layer, param: str) -> tuple[str, str | None]:
    """(file, layer name or None) behind a vector layer saved on disk, or a message saying to save it."""
    if layer is None:
        raise QgsProcessingException(f"{param}: no vector layer given.")
    parts = layer.source().split("|")
    path = parts[0]
    if layer.providerType() != "ogr" or not os.path.isfile(path):
        raise QgsProcessingException(f"{param}: the layer '{layer.name()}' is not a file on disk; save it (e.g. as "
                                     "GeoPackage) first.")
    name = next((p.split("=", 1)[1] for p in parts[1:] if p.startswith("layername=")), None)
    return path, name


class RetrainAlgorithm(GeorsAlgorithm):
    command = ("train", "detector")
    display = "Retrain from corrections"
    group_id, group_name = "training", "Training"
    description = ("The analyst's loop: after a run, edit its detections layer (delete the false positives, draw "
                   "the missed objects, save the edits; optionally draw the area you reviewed as polygons, e.g. a "
                   "layer 'reviewed_area' in the same GeoPackage). This fine-tunes the run's model from the edits: "
                   "kept and drawn boxes are objects, deleted ones hard negatives, inside the reviewed area (without "
                   "one: the tiles you edited); nothing outside it is trained on. Then it re-runs the new model on "
                   "the scenes you choose. Grey boxes below the score threshold that you leave are background; set "
                   "their passes_threshold to 1 to keep them as objects.")
    opts = O.TABLES["train detector"]
    skip = ("--scene", "--labels", "--corrections", "--reviewed-area", "--empty-scene")
    jsonl_fallback = True

    def name(self):
        return "retrain_from_corrections"

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterVectorLayer(
            "CORRECTIONS", "Corrected detections layer (the detections of a geors output, edited and saved)",
            [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterVectorLayer(
            "REVIEWED_AREA", "Reviewed area (polygons; empty = the layer reviewed_area, else the edited tiles)",
            [QgsProcessing.TypeVectorPolygon], None, True))
        self.add_options()
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Fine-tuned model file",
                                                                "geors model (*.safetensors)"))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "RERUN_SCENES", "Scenes to run the new model on (optional)", QgsProcessing.TypeRaster, None, True))
        self.addParameter(QgsProcessingParameterFileDestination(
            "DETECTIONS", "Detections of the new model (GeoPackage; needed with scenes)",
            "GeoPackage (*.gpkg *.GPKG)", None, True, False))
        self.addOutput(QgsProcessingOutputString("SUMMARY", "Summary (JSON)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        if "process" in vars(GeorsAlgorithm):  # the base prepares scene exports and calls process
            return super().processAlgorithm(parameters, context, feedback)
        return self.process(parameters, context, feedback)

    def corrections_args(self, parameters, context) -> list[str]:
        layer = self.parameterAsVectorLayer(parameters, "CORRECTIONS", context)
        path, name = layer_file(layer, "CORRECTIONS")
        if name not in (None, "detections"):
            raise QgsProcessingException(f"CORRECTIONS: give the 'detections' layer of a geors output (got layer "
                                         f"'{name}' of {path}).")
        if layer.isEditable() and layer.isModified():
            raise QgsProcessingException(f"CORRECTIONS: the layer '{layer.name()}' has unsaved edits; save them "
                                         "(Toggle Editing > Save) so that geors reads them.")
        args = ["--corrections", path]
        if parameters.get("REVIEWED_AREA"):
            area, area_name = layer_file(self.parameterAsVectorLayer(parameters, "REVIEWED_AREA", context),
                                         "REVIEWED_AREA")
            if not (os.path.samefile(area, path) and area_name == "reviewed_area"):  # that one is found anyway
                args += ["--reviewed-area", area + (f"|layername={area_name}" if area_name else "")]
        return args

    def rerun_scenes(self, parameters, context) -> list[str]:
        if not parameters.get("RERUN_SCENES"):
            return []
        layers = self.parameterAsLayerList(parameters, "RERUN_SCENES", context)
        if hasattr(self, "scene_file") and getattr(self, "exports", None) is not None:
            return [self.scene_file(lyr, "RERUN_SCENES") for lyr in layers]
        out = []
        for lyr in layers:
            path = lyr.source().split("|")[0]
            if lyr.providerType() != "gdal" or not os.path.isfile(path):
                raise QgsProcessingException(f"RERUN_SCENES: the layer '{lyr.name()}' is not a raster file on disk.")
            out.append(path)
        return out

    def process(self, parameters, context, feedback) -> dict:
        model = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        scenes = self.rerun_scenes(parameters, context)
        detections = self.parameterAsFileOutput(parameters, "DETECTIONS", context) if scenes else None
        if scenes and not detections:
            raise QgsProcessingException("DETECTIONS: give the GeoPackage the new model's detections go to.")
        args = [*self.command, *self.corrections_args(parameters, context), "-o", model,
                *self.option_args(parameters, context)]
        result = self.run_cli(args, feedback)
        summary = result.parsed_stdout() or {}
        outputs = {"OUTPUT": model, "SUMMARY": json.dumps(summary), "DETECTIONS": None}
        if scenes:
            existed = os.path.exists(detections)
            saved = self.command
            try:
                self.command = ("detect",)
                feedback.pushInfo(f"Running the new model on {len(scenes)} scene(s)")
                run = self.run_cli(["detect", *scenes, "-o", detections, "--model", model], feedback,
                                   n_scenes=len(scenes))
            finally:
                self.command = saved
            det_summary = run.parsed_stdout() or {}
            run_id = det_summary.get("run_id")
            load_results_on_completion(context, detections, f"geors retrained: {os.path.basename(model)}"
                                       + (f" ({run_id})" if run_id else ""), None,
                                       run_id if existed else None)
            outputs["DETECTIONS"] = detections
            summary["detect"] = det_summary
            outputs["SUMMARY"] = json.dumps(summary)
        return outputs
