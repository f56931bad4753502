"""Plugin object: registers the Processing provider, and in the QGIS window a Plugins > geors menu (Set up
environment, Check installation) and, while no geors environment works, a message bar offering the set-up."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from qgis.core import Qgis, QgsApplication

MENU = "&geors"
SETUP_ID = "geors:setup_environment"
CHECK_ID = "geors:check_installation"
ICON = str(Path(__file__).with_name("icon.png"))


def open_algorithm_dialog(alg_id: str) -> None:
    """The Processing dialog of ``alg_id`` (it runs the algorithm as a background task with Cancel)."""
    import processing

    processing.execAlgorithmDialog(alg_id, {})


class GeorsPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None
        self.actions = []
        self.offer = None  # the message bar item offering the set-up

    def initProcessing(self):  # noqa: N802
        from .provider import GeorsProvider

        self.provider = GeorsProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:  # qgis_process and tests: the toolbox is all there is
            return
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        for text, alg_id in (("Set up environment…", SETUP_ID), ("Check installation…", CHECK_ID)):
            action = QAction(QIcon(ICON), text, self.iface.mainWindow())
            action.triggered.connect(partial(open_algorithm_dialog, alg_id))
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)
        if not self.environment_works():
            self.offer_setup()
        self.provider.algorithmsLoaded.connect(self.environment_changed)

    def environment_changed(self) -> None:
        """The provider re-read the environment (Set up environment, or the setting changed)."""
        if self.offer is not None and self.environment_works():
            self.iface.messageBar().popWidget(self.offer)
            self.offer = None

    def environment_works(self) -> bool:
        info = self.provider.info if self.provider is not None else None
        return bool(info and info.env is not None and info.probe is not None and info.probe.ok)

    def offer_setup(self) -> None:
        """A message bar item: no working geors environment yet, with a button that opens Set up environment."""
        from qgis.PyQt.QtWidgets import QPushButton

        bar = self.iface.messageBar()
        item = bar.createMessage("geors", "no working geors environment yet: the algorithms run geors in its own "
                                          "Python with torch, which Set up environment makes in one run.")
        button = QPushButton("Set up environment", item)

        def clicked():
            bar.popWidget(item)
            self.offer = None
            open_algorithm_dialog(SETUP_ID)

        button.clicked.connect(clicked)
        item.layout().addWidget(button)
        bar.pushWidget(item, Qgis.Info)
        self.offer = item

    def unload(self):
        if self.actions and self.provider is not None:
            self.provider.algorithmsLoaded.disconnect(self.environment_changed)
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
        self.actions = []
        if self.offer is not None and self.iface is not None:
            self.iface.messageBar().popWidget(self.offer)
            self.offer = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
