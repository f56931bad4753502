"""The plugin's one setting: where the geors environment is (Processing > Options > Providers > geors)."""

from __future__ import annotations

from qgis.core import QgsSettings

SETTING_NAME = "GEORS_PYTHON"
SETTING_GROUP = "geors"
SETTING_DESCRIPTION = "geors Python environment (venv folder, python interpreter or geors executable)"


def configured_environment() -> str:
    """The setting's value ("" when unset): read from QgsSettings, so it also works without the Processing GUI."""
    value = QgsSettings().value(f"Processing/Configuration/{SETTING_NAME}", "")
    return str(value or "")


def store_environment(path: str) -> None:
    """Make ``path`` (a venv folder, python or geors executable) the plugin's environment.

    Written to QgsSettings at once (safe from a task's thread; qgis_process keeps it in its profile too).
    Processing's own copy of the setting, when it is loaded, is updated by :func:`sync_processing_setting`
    on the main thread, or the Options dialog would save its stale value over it.
    """
    QgsSettings().setValue(f"Processing/Configuration/{SETTING_NAME}", path)


def sync_processing_setting() -> None:
    """Processing's in-memory copy of the setting re-read from QgsSettings (main thread only)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    setting = ProcessingConfig.settings.get(SETTING_NAME)
    if setting is not None:
        setting.read()


def register_setting() -> None:
    """Show the setting in Processing's options dialog (does nothing when the Processing plugin is absent)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:
        return
    ProcessingConfig.addSetting(Setting(SETTING_GROUP, SETTING_NAME, SETTING_DESCRIPTION, "",
                                        valuetype=Setting.FILE))
    ProcessingConfig.readSettings()


def unregister_setting() -> None:
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    if SETTING_NAME in ProcessingConfig.settings:
        ProcessingConfig.removeSetting(SETTING_NAME)
