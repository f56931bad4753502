"""The "geors" Processing provider: finds the geors environment once, then lists the algorithms."""

from __future__ import annotations

import json

from qgis.core import QgsMessageLog, QgsProcessingProvider, QgsSettings
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS, ICON, ProviderInfo, SegmentAlgorithm
from .environment import (
    EnvironmentNotFound,
    describe,
    find_environment,
    model_info,
    parse_help_options,
    probe,
    probe_from_description,
    run_quick,
)
from .retrain import RetrainAlgorithm
from .settings import configured_environment, register_setting, unregister_setting
from .setup_algorithm import CheckInstallationAlgorithm, SetupEnvironmentAlgorithm

DEFAULT_MODEL = "r2cnn-neon-trees"
_CACHE_KEY = "geors_qgis/model_info_cache"


def _cached_model_info(env, version: str) -> dict | None:
    """The default model's metadata, cached per environment and geors version (asking costs a torch import)."""
    settings = QgsSettings()
    key = json.dumps([list(env.argv), version, DEFAULT_MODEL])
    try:
        cache = json.loads(settings.value(_CACHE_KEY, "{}") or "{}")
    except ValueError:
        cache = {}
    if key in cache:
        return cache[key]
    info = model_info(env, DEFAULT_MODEL)
    if info is not None:
        settings.setValue(_CACHE_KEY, json.dumps({key: info}))
    return info


def discover() -> ProviderInfo:
    """Environment, version, commands, default model metadata and ``segment`` options (never raises)."""
    info = ProviderInfo()
    try:
        info.env = find_environment(configured_environment())
    except EnvironmentNotFound as exc:
        QgsMessageLog.logMessage(f"geors: {exc} Run 'Check installation'.", "geors")
        return info
    info.description = describe(info.env)  # one call: options of every command, version, command list
    info.probe = probe_from_description(info.description) if info.description else probe(info.env)
    if not info.probe.ok:
        QgsMessageLog.logMessage(f"geors: the environment does not run: {info.probe.error[-500:]}", "geors")
        return info
    info.model = _cached_model_info(info.env, info.probe.version)
    if info.probe.has_segment and info.description is None:
        text = run_quick(info.env, ["segment", "--help"]).stdout
        info.segment_help = parse_help_options(text)
        info.segment_usage = next((ln for ln in text.splitlines() if ln.startswith("Usage:")), "")
        info.segment_has_progress = "--progress" in text
    return info


class GeorsProvider(QgsProcessingProvider):
    def __init__(self):
        super().__init__()
        self.info = ProviderInfo()
        self._watching = False

    def id(self):
        return "geors"

    def name(self):
        return "geors"

    def longName(self):  # noqa: N802
        v = self.info.probe.version if self.info.probe and self.info.probe.ok else "environment not found"
        return f"geors ({v})"

    def icon(self):
        return QIcon(ICON)

    def load(self):
        register_setting()
        try:  # re-read the environment when the user changes the setting
            from processing.core.ProcessingConfig import settingsWatcher

            if not self._watching:
                settingsWatcher.settingsChanged.connect(self.refreshAlgorithms)
                self._watching = True
        except ImportError:
            pass
        self.refreshAlgorithms()
        return True

    def unload(self):
        if self._watching:
            from processing.core.ProcessingConfig import settingsWatcher

            try:
                settingsWatcher.settingsChanged.disconnect(self.refreshAlgorithms)
            except TypeError:
                pass
            self._watching = False
        unregister_setting()

    def loadAlgorithms(self):  # noqa: N802
        self.info = discover()
        for cls in ALGORITHMS:
            self.addAlgorithm(cls(self.info))
        self.addAlgorithm(CheckInstallationAlgorithm(self.info))
        self.addAlgorithm(SetupEnvironmentAlgorithm(self.info))
        self.addAlgorithm(RetrainAlgorithm(self.info))  # the analyst's loop (retrain.py)
        if self.info.probe is not None and self.info.probe.has_segment:
            self.addAlgorithm(SegmentAlgorithm(self.info))
