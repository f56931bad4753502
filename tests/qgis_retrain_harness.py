"""*Retrain from corrections* inside QGIS's own Python, headless (tests/test_qgis_retrain.py).

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_retrain_harness.py EDITED.gpkg SCENE.tif OUT_DIR

Starts QGIS and the geors provider as tests/qgis_harness.py does, loads the edited detections layer, runs
``geors:retrain_from_corrections`` (a few steps, then the new model on the scene) and prints ``RESULT <json>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qgis_harness as h  # noqa: E402  (QGIS start-up, feedback that keeps the log)


def case_retrain(edited: str, scene: str, out_dir: str) -> dict:
    import processing
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

    layer = QgsVectorLayer(f"{edited}|layername=detections", "detections", "ogr")
    raster = QgsRasterLayer(scene, "scene")
    QgsProject.instance().addMapLayers([layer, raster])
    fb = h.LogFeedback()
    res = processing.run("geors:retrain_from_corrections", {
        "CORRECTIONS": layer.id(), "STEPS": 3, "VALIDATIONS": 1, "BATCH_SIZE": 2, "CROP": 128, "DEVICE": "cpu",
        "OUTPUT": f"{out_dir}/retrained.safetensors", "RERUN_SCENES": [raster.id()],
        "DETECTIONS": f"{out_dir}/after.gpkg"}, feedback=fb)
    return {"summary": json.loads(res["SUMMARY"]), "output": res["OUTPUT"], "detections": res["DETECTIONS"],
            "commands": [ln for ln in fb.log if ln.startswith("command: ")], "texts": fb.texts}


if __name__ == "__main__":
    app, provider = h.start()
    h.run_case(lambda: case_retrain(*sys.argv[1:]))
