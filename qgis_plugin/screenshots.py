"""Screenshots for docs/qgis.md, taken from the real QGIS desktop (run it under Xvfb).

    xvfb-run -a -s "-screen 0 1440x900x24" env GEORS_PYTHON=... GEORS_SHOT_SCENE=scene.tif \\
        GEORS_SHOT_DIR=docs/img qgis --profiles-path /tmp/qgis-shots --nologo --noversioncheck \\
        --code qgis_plugin/screenshots.py

The profile folder must hold the plugin (python/plugins/geors_qgis) enabled in
QGIS/QGIS3.ini; ``python qgis_plugin/screenshots.py --prepare-profile DIR`` prepares one.
The script opens the Processing toolbox, the "Run pipeline" dialog, runs it on
the scene, then shows the result layers, saving one PNG per step, and quits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def prepare_profile(folder: Path) -> None:
    """A QGIS profile with the plugin from this repository linked in and enabled."""
    prof = folder / "profiles" / "default"
    plugins = prof / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "geors_qgis"
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parent / "geors_qgis")
    ini = prof / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\ngeors_qgis=true\nprocessing=true\n\n"
                   "[qgis]\nshowTips=false\nshowTips322=false\ncheckVersion=false\n\n"
                   "[UI]\nUI/showTips=false\n", encoding="utf-8")


def _shots():  # runs inside QGIS (--code)
    import processing
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QDockWidget, QTextEdit, QTreeView
    from qgis.utils import iface

    out_dir = Path(os.environ.get("GEORS_SHOT_DIR", "docs/img"))
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = os.environ["GEORS_SHOT_SCENE"]
    gpkg = os.environ.get("GEORS_SHOT_OUT", "/tmp/geors_shot.gpkg")
    for p in (gpkg, gpkg + "-journal"):
        if os.path.exists(p):
            os.remove(p)
    win = iface.mainWindow()
    win.resize(1400, 860)
    raster = QgsRasterLayer(scene, Path(scene).stem)
    QgsProject.instance().addMapLayer(raster)
    iface.setActiveLayer(raster)
    iface.mapCanvas().setExtent(raster.extent())
    state = {"dlg": None, "t": 0}

    def save(widget, name):
        widget.grab().save(str(out_dir / name))
        print("saved", out_dir / name, flush=True)

    def step_toolbox():
        dock = win.findChild(QDockWidget, "ProcessingToolbox")
        if dock is not None:
            dock.show()
            dock.raise_()
            box = getattr(dock, "searchBox", None)
            if box is not None:
                box.setText("geors")
            for tree in dock.findChildren(QTreeView):
                tree.expandAll()
        QTimer.singleShot(1500, lambda: (save(win, "qgis_toolbox.png"), step_dialog()))

    def step_dialog():
        dlg = processing.createAlgorithmDialog("geors:run", {"SCENES": [raster.id()], "OUTPUT": gpkg,
                                                             "DEVICE": "cpu"})
        state["dlg"] = dlg
        dlg.resize(900, 720)
        dlg.show()
        QTimer.singleShot(1500, lambda: (save(dlg, "qgis_run_dialog.png"), dlg.runAlgorithm(), wait_run()))

    def wait_run():
        dlg = state["dlg"]
        state["t"] += 1
        if dlg.results() or state["t"] > 400:
            QTimer.singleShot(1500, step_log)
        else:
            QTimer.singleShot(500, wait_run)

    def step_log():
        scroll_to(state["dlg"], "--progress jsonl")
        save(state["dlg"], "qgis_run_log.png")
        state["dlg"].close()
        iface.mapCanvas().zoomToFullExtent()
        iface.mapCanvas().refreshAllLayers()
        QTimer.singleShot(4000, lambda: (save(win, "qgis_results.png"), step_check()))

    def step_check():
        dlg = processing.createAlgorithmDialog("geors:check_installation", {})
        state["dlg"], state["t"] = dlg, 0
        dlg.resize(900, 620)
        dlg.show()
        dlg.runAlgorithm()
        QTimer.singleShot(1000, wait_check)

    def wait_check():
        dlg = state["dlg"]
        state["t"] += 1
        if dlg.results() or state["t"] > 200:
            QTimer.singleShot(1000, lambda: (show_report(dlg), save(dlg, "qgis_check_installation.png"),
                                             dlg.close(), QgsApplication.exit(0)))
        else:
            QTimer.singleShot(500, wait_check)

    def show_report(dlg):  # the report's first line on top (the results dict repeats it below)
        scroll_to(dlg, "geors installation:")

    def scroll_to(dlg, needle):
        for txt in dlg.findChildren(QTextEdit):
            cursor = txt.document().find(needle)
            if not cursor.isNull():
                txt.setTextCursor(cursor)
                bar = txt.verticalScrollBar()
                bar.setValue(bar.value() + txt.cursorRect().top() - 4)

    QTimer.singleShot(3000, step_toolbox)


if __name__ == "__main__" and "--prepare-profile" in sys.argv:
    prepare_profile(Path(sys.argv[sys.argv.index("--prepare-profile") + 1]))
elif __name__ != "__main__" or "qgis" in sys.modules:
    _shots()
