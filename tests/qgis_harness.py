"""Run the geors QGIS plugin inside QGIS's own Python, headless; used by tests/test_qgis_plugin.py.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_harness.py CASE [ARGS...]

Each case starts QgsApplication (a throw-away profile folder, so no user
settings leak in), initialises Processing, registers the provider from
qgis_plugin/ and prints one line ``RESULT <json>`` that the test reads. The
geors environment comes from $GEORS_PYTHON (the test passes its own
interpreter), exactly as a user would configure it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRATCH: list[str] = []  # throw-away folders of this run, removed before the process ends
sys.path.insert(0, str(REPO / "qgis_plugin"))
sys.path.append("/usr/share/qgis/python/plugins")

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorLayer,
)


class LogFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm reported; optionally cancels once some tiles are done."""

    def __init__(self, cancel_after: float | None = None):
        super().__init__()
        self.cancel_after = cancel_after
        self.progress: list[float] = []
        self.log: list[str] = []
        self.texts: list[str] = []

    def setProgressText(self, t):  # noqa: N802
        super().setProgressText(t)
        self.texts.append(t)

    def setProgress(self, p):  # noqa: N802
        super().setProgress(p)
        self.progress.append(float(p))
        if self.cancel_after is not None and 0 < p and p >= self.cancel_after and not self.isCanceled():
            self.cancel()

    def pushInfo(self, t):  # noqa: N802
        self.log.append("info: " + t)

    def pushWarning(self, t):  # noqa: N802
        self.log.append("warning: " + t)

    def reportError(self, t, fatal=False):  # noqa: N802
        self.log.append("error: " + t)

    def pushConsoleInfo(self, t):  # noqa: N802
        self.log.append("console: " + t)

    def pushCommandInfo(self, t):  # noqa: N802
        self.log.append("command: " + t)


def start(register: bool = True):
    profile = tempfile.mkdtemp(prefix="geors-qgis-profile-")
    SCRATCH.append(profile)
    app = QgsApplication([], False, profile)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    if not register:
        return app, None
    from geors_qgis.provider import GeorsProvider

    provider = GeorsProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    return app, provider


def layer_facts(uri: str) -> dict:
    lyr = QgsVectorLayer(uri, "l", "ogr")
    if not lyr.isValid():
        return {"valid": False}
    return {"valid": True, "crs": lyr.crs().authid(), "count": lyr.featureCount(),
            "fields": [f.name() for f in lyr.fields()],
            "boxes": sorted([round(c, 3) for c in (f.geometry().boundingBox().xMinimum(),
                                                   f.geometry().boundingBox().yMinimum())]
                            for f in lyr.getFeatures())}


def detect_params(scene: str, out: str, **extra) -> dict:
    p = {"SCENES": [scene], "OUTPUT": out, "NO_GATE": True, "SCORE_THRESHOLD": 0.05, "TILE": 256, "OVERLAP": 64,
         "DEVICE": "cpu", "BATCH_SIZE": 1}
    p.update(extra)
    return p


def case_list(provider) -> dict:
    return {"provider": provider.longName(),
            "algorithms": {a.id(): a.displayName() for a in provider.algorithms()},
            "parameters": {a.id(): [p.name() for p in a.parameterDefinitions()] for a in provider.algorithms()},
            "defaults": {p.name(): p.defaultValue() for p in provider.algorithm("detect").parameterDefinitions()
                         if p.name() in ("TILE", "OVERLAP", "GATE_THRESHOLD", "SCORE_THRESHOLD")},
            # every parameter's type, default, optional flag and (enums) options, per algorithm
            "fields": {a.id(): {p.name(): {"type": p.type(), "default": p.defaultValue(),
                                           "optional": bool(p.flags() & p.FlagOptional),
                                           "options": list(p.options()) if p.type() == "enum" else None}
                                for p in a.parameterDefinitions()} for a in provider.algorithms()}}


def case_detect(scene: str, out: str) -> dict:
    import processing

    fb = LogFeedback()
    res = processing.run("geors:detect", detect_params(scene, out), feedback=fb)
    return {"outputs": {k: v for k, v in res.items()}, "layer": layer_facts(res["DETECTIONS"]),
            "progress_max": max(fb.progress or [0]), "log": fb.log[-30:]}


def case_cancel(scene: str, out: str) -> dict:
    import processing

    fb = LogFeedback(cancel_after=1.0)
    message = None
    try:
        processing.run("geors:detect", detect_params(scene, out), feedback=fb)
    except QgsProcessingException as exc:
        message = str(exc)
    return {"message": message, "log": fb.log[-30:]}


def case_resume(scene: str, out: str) -> dict:
    import processing

    res = processing.run("geors:detect", detect_params(scene, out, RESUME=True), feedback=LogFeedback())
    return {"outputs": dict(res), "layer": layer_facts(f"{out}|layername=detections")}


def case_missing(scene: str, out: str) -> dict:
    import processing

    check = processing.run("geors:check_installation", {}, feedback=LogFeedback())
    message = None
    try:
        processing.run("geors:detect", detect_params(scene, out), feedback=LogFeedback())
    except QgsProcessingException as exc:
        message = str(exc)
    return {"check": check, "detect_message": message}


def case_boxes(scene: str, boxes_gpkg: str, out_dir: str) -> dict:
    """Masks from boxes and Label raster from boxes, with a box layer from a GeoPackage (layer name passed on)."""
    import processing
    from qgis.core import QgsRasterLayer

    boxes = QgsVectorLayer(f"{boxes_gpkg}|layername=detections", "boxes", "ogr")
    QgsProject.instance().addMapLayer(boxes)
    masks = processing.run("geors:masks", {"SCENE": scene, "BOXES": boxes.id(), "SAM": "box",
                                           "OUTPUT": f"{out_dir}/masks.gpkg"}, feedback=LogFeedback())
    label = processing.run("geors:label", {"SCENE": scene, "BOXES": boxes.id(), "SAM": "box",
                                           "OUTPUT": f"{out_dir}/labels.tif"}, feedback=LogFeedback())
    lab = QgsRasterLayer(label["OUTPUT"], "labels")
    from geors_qgis.layers import style_label_raster

    style_label_raster(lab)
    return {"label_renderer": lab.renderer().type(),
            "label_classes": [c.label for c in getattr(lab.renderer(), "classes", lambda: [])()],
            "instances": layer_facts(masks["INSTANCES"]), "boxes": boxes.featureCount(),
            "label_valid": lab.isValid(), "label_crs": lab.crs().authid(), "label_size": [lab.width(), lab.height()]}


def case_scene(scene: str, out: str) -> dict:
    """Scene info and Tile grid."""
    import processing

    info = processing.run("geors:info", {"SCENE": scene, "TILE": 256, "OVERLAP": 64}, feedback=LogFeedback())
    tiles = processing.run("geors:tiles", {"SCENE": scene, "TILE": 256, "OVERLAP": 64, "OUTPUT": out},
                           feedback=LogFeedback())
    return {"info": json.loads(info["INFO"]), "tiles": layer_facts(tiles["TILES"]),
            "cores": layer_facts(tiles["TILE_CORES"])}


def case_check() -> dict:
    import processing

    return dict(processing.run("geors:check_installation", {}, feedback=LogFeedback()))


def case_defaults() -> dict:
    """Dialog defaults that follow the model metadata (gate and score thresholds)."""
    from geors_qgis import options as O

    calibrated = {o.flag: o.default for o in O.with_model_defaults(O.DETECT, {"gate_threshold": 0.2222,
                                                                              "score_threshold": 0.15})}
    plain = {o.flag: o.default for o in O.with_model_defaults(O.DETECT, {"gate_threshold": 0.5,
                                                                         "score_threshold": None})}
    return {"gate": calibrated["--gate-threshold"], "score": calibrated["--score-threshold"],
            "score_without": plain["--score-threshold"]}


def _legend_items(renderer):
    """Categories of a categorized renderer; (label, active) of a rule-based renderer's rules."""
    if renderer.type() == "RuleRenderer":
        return [(r.label(), r.active()) for r in renderer.rootRule().children()]
    return [cat.value() for cat in getattr(renderer, "categories", lambda: [])()]


def case_load(scene: str, out: str) -> dict:
    """runAndLoadResults: the layers land in the project, styled, in one group per run."""
    import processing
    from qgis.core import QgsFeatureRequest

    processing.runAndLoadResults("geors:run", detect_params(scene, out, SAM="box", SCORE_THRESHOLD=0.3,
                                                            MIN_SCORE=0.01), feedback=LogFeedback())
    root = QgsProject.instance().layerTreeRoot()
    groups, rule_counts = {}, {}
    for g in root.findGroups():
        groups[g.name()] = [(c.layer().name(), c.layer().renderer().type(), c.layer().crs().authid(),
                             _legend_items(c.layer().renderer())) for c in g.findLayers()]
        for c in g.findLayers():
            lyr = c.layer()
            if lyr.name() == "detections" and lyr.renderer().type() == "RuleRenderer":
                # features each rule draws (its filter on the layer), and what the layer holds
                rule_counts = {r.label(): sum(1 for _ in lyr.getFeatures(QgsFeatureRequest().setFilterExpression(
                    r.filterExpression()))) for r in lyr.renderer().rootRule().children()}
                rule_counts["layer"] = lyr.featureCount()
                rule_counts["below"] = sum(1 for f in lyr.getFeatures() if f["passes_threshold"] == 0)
    return {"groups": groups, "rule_counts": rule_counts,
            "root_layers": [c.name() for c in root.children() if c not in root.findGroups()]}


def case_train(scene: str, boxes: str, polygons: str, area: str, out_dir: str) -> dict:
    """Train detector and Train segmenter with a 15 s budget: summaries, progress texts, the command lines."""
    import processing

    result = {}
    for alg, params in (("geors:train_detector", {"SCENES": [scene], "LABELS": [boxes], "MAX_MINUTES": 0.25,
                                                  "DEVICE": "cpu", "OUTPUT": f"{out_dir}/det.safetensors"}),
                        ("geors:train_segmenter", {"SCENES": [scene], "LABELS": [polygons], "CLASS_FIELD": "class",
                                                   "SMALL_CLASSES": "tree", "MAX_MINUTES": 0.25, "DEVICE": "cpu",
                                                   "LABELLED_AREA": area, "OUTPUT": f"{out_dir}/seg.safetensors"})):
        fb = LogFeedback()
        res = processing.run(alg, params, feedback=fb)
        result[alg] = {"summary": json.loads(res["SUMMARY"]), "output": res["OUTPUT"], "texts": fb.texts,
                       "progress_max": max(fb.progress or [0]),
                       "commands": [ln for ln in fb.log if ln.startswith("command: ")],
                       "info": [ln for ln in fb.log if ln.startswith("info: ")]}
    return result


def case_wms(out: str) -> dict:
    import processing
    from qgis.core import QgsRasterLayer

    wms = QgsRasterLayer("type=xyz&url=https://tile.openstreetmap.org/{z}/{x}/{y}.png&zmax=19&zmin=0",
                         "OpenStreetMap", "wms")
    QgsProject.instance().addMapLayer(wms)
    try:
        processing.run("geors:detect", {"SCENES": [wms.id()], "OUTPUT": out}, feedback=LogFeedback())
    except QgsProcessingException as exc:
        return {"message": str(exc)}
    return {"message": None}


def case_zip(zip_path: str) -> dict:
    """Install the built archive the way "Install from ZIP" does (unpack into a plugins folder) and start it."""
    import zipfile

    plugins = Path(tempfile.mkdtemp(prefix="geors-qgis-plugins-"))
    SCRATCH.append(str(plugins))
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(plugins)
    for name in [m for m in sys.modules if m == "geors_qgis" or m.startswith("geors_qgis.")]:
        del sys.modules[name]
    sys.path.insert(0, str(plugins))
    import geors_qgis

    plugin = geors_qgis.classFactory(None)
    plugin.initProcessing()
    provider = QgsApplication.processingRegistry().providerById("geors")
    return {"module": geors_qgis.__file__, "algorithms": sorted(a.id() for a in provider.algorithms())}


def run_case(case) -> None:
    """Run ``case()`` (a harness case), print its result (or its exception) as one ``RESULT`` JSON line for the
    test, remove this run's scratch folders and end the process (every harness's ``__main__``)."""
    try:
        result = case()
    except Exception as exc:  # the test shows this instead of a bare exit code
        import traceback

        result = {"exception": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print("RESULT " + json.dumps(result, default=str), flush=True)
    for folder in SCRATCH:  # os._exit skips atexit handlers
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(0)  # QgsApplication's exitQgis can crash after Processing; the result is out


if __name__ == "__main__":
    case, args = sys.argv[1], sys.argv[2:]
    if case == "zip":
        sys.path.remove(str(REPO / "qgis_plugin"))
    app, provider = start(register=case != "zip")
    run_case(lambda: case_list(provider) if case == "list" else globals()[f"case_{case}"](*args))
