"""The plugin's window parts (Plugins > geors menu, the message bar offering the set-up) in a headless QGIS;
used by tests/test_qgis_install_profile.py.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_install_harness.py gui

Starts QgsApplication with widgets in a throw-away profile, gives the plugin a small stand-in for QGIS's
``iface`` (a main window, a real QgsMessageBar, the plugin menu calls recorded), and prints ``RESULT <json>``.
The geors environment comes from $GEORS_PYTHON, as in tests/qgis_harness.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "qgis_plugin"))
sys.path.append("/usr/share/qgis/python/plugins")

from qgis.core import QgsApplication  # noqa: E402


class Iface:
    """The parts of QgisInterface the plugin uses."""

    def __init__(self):
        from qgis.gui import QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow

        self.window = QMainWindow()
        self.bar = QgsMessageBar(self.window)
        self.menu: list[tuple[str, str]] = []

    def mainWindow(self):  # noqa: N802
        return self.window

    def messageBar(self):  # noqa: N802
        return self.bar

    def addPluginToMenu(self, menu, action):  # noqa: N802
        self.menu.append((menu, action.text()))

    def removePluginMenu(self, menu, action):  # noqa: N802
        self.menu.remove((menu, action.text()))


def case_gui(environment: str = "") -> dict:
    """The menu, the offer and its button; then, when ``environment`` is given, the offer goes once the
    setting names it and the provider reloads (what Set up environment does at its end)."""
    import geors_qgis
    from geors_qgis import plugin as plugin_module
    from qgis.PyQt.QtWidgets import QPushButton

    opened: list[str] = []
    plugin_module.open_algorithm_dialog = opened.append  # the dialog is modal: record what would open
    iface = Iface()
    plugin = geors_qgis.classFactory(iface)
    plugin.initGui()
    menu = list(iface.menu)
    actions = {a.text(): a for a in plugin.actions}
    actions["Check installation…"].trigger()
    offered = plugin.offer is not None
    buttons = [b.text() for b in plugin.offer.findChildren(QPushButton)] if offered else []
    if offered:
        plugin.offer.findChildren(QPushButton)[0].click()
    after_click = plugin.offer is None
    gone_after_setup = None
    if environment:
        from geors_qgis.settings import store_environment

        if plugin.offer is None:
            plugin.offer_setup()
        store_environment(environment)
        plugin.provider.refreshAlgorithms()
        gone_after_setup = plugin.offer is None
    works = plugin.environment_works()
    from qgis.core import QgsSettings

    settings_file = QgsSettings().fileName()
    plugin.unload()
    return {"menu": menu, "offered": offered, "buttons": buttons, "opened": opened, "after_click": after_click,
            "menu_after_unload": iface.menu, "works": works,
            "gone_after_setup": gone_after_setup, "settings_file": settings_file}


def isolate_settings(profile: str) -> None:
    """QgsSettings in ``profile``: a script's QgsApplication has no organisation name, so its settings would go
    to ~/.config/Unknown Organization.conf, shared by every run (the set-up writes the plugin setting)."""
    from qgis.PyQt.QtCore import QCoreApplication, QSettings

    QCoreApplication.setOrganizationName("QGIS")
    QCoreApplication.setApplicationName("QGIS3")
    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, profile)


if __name__ == "__main__":
    profile = tempfile.mkdtemp(prefix="geors-qgis-profile-")
    isolate_settings(profile)
    app = QgsApplication([], True, profile)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    try:
        result = globals()[f"case_{sys.argv[1]}"](*sys.argv[2:])
    except Exception as exc:
        import traceback

        result = {"exception": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    print("RESULT " + json.dumps(result, default=str), flush=True)
    shutil.rmtree(profile, ignore_errors=True)
    os._exit(0)
