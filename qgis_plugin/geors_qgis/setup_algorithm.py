"""The Setup group: *Check installation* (what the plugin's geors environment has and, for each missing
piece, the fix) and *Set up environment* (a geors environment made and configured from QGIS, in one run).

Processing runs it as a background task (progress bar, Cancel) in the dialog and headless through
``qgis_process run geors:setup_environment``. The work is :mod:`setup_env`'s; this module reads the
parameters, stores the result in the plugin setting and reloads the provider.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputFile,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QIcon

from . import setup_env as S
from .environment import install_source
from .install_check import check_installation, format_report
from .settings import configured_environment, store_environment, sync_processing_setting

ICON = str(Path(__file__).with_name("icon.png"))
TORCH_LABELS = ["auto: CUDA build where an NVIDIA GPU is found, else CPU-only",
                "CPU-only build (download.pytorch.org/whl/cpu)",
                "CUDA build",
                "PyPI's default for this platform"]


class SetupAlgorithm(QgsProcessingAlgorithm):
    """The Setup group's algorithms: they work without a geors environment (they find or make one)."""

    def __init__(self, info=None):
        super().__init__()
        self.info = info

    def createInstance(self):  # noqa: N802
        return type(self)(self.info)

    def group(self):
        return "Setup"

    def groupId(self):  # noqa: N802
        return "setup"

    def icon(self):
        return QIcon(ICON)


class CheckInstallationAlgorithm(SetupAlgorithm):
    """Reports the geors environment and, for each missing piece, the command that fixes it."""

    def name(self):
        return "check_installation"

    def displayName(self):  # noqa: N802
        return "Check installation"

    def shortHelpString(self):  # noqa: N802
        return ("Finds the geors environment (plugin setting, $GEORS_PYTHON, or 'geors' on PATH) and reports the "
                "versions of geors and torch, CUDA, the detector models and SAM checkpoints present; for every "
                "missing piece it prints the exact command that fixes it.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFileDestination("REPORT_FILE", "Save report as",
                                                                "Text (*.txt)", None, True, False))
        self.addOutput(QgsProcessingOutputString("REPORT", "Report"))
        self.addOutput(QgsProcessingOutputBoolean("OK", "Everything needed is installed"))
        self.addOutput(QgsProcessingOutputFile("REPORT_FILE", "Report file"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        report = check_installation(configured_environment(), feedback)
        text = format_report(report)
        for line in text.splitlines():
            feedback.pushInfo(line)
        path = self.parameterAsFileOutput(parameters, "REPORT_FILE", context)
        if path:
            Path(path).write_text(text, encoding="utf-8")
        return {"REPORT": text, "OK": report["ok"], "REPORT_FILE": path or None}


class SetupEnvironmentAlgorithm(SetupAlgorithm):
    """Creates a venv, installs torch and geors into it, checks it and makes it the plugin's environment."""

    def __init__(self, info=None):
        super().__init__(info)
        self._stored: str | None = None

    def name(self):
        return "setup_environment"

    def displayName(self):  # noqa: N802
        return "Set up environment"

    def shortHelpString(self):  # noqa: N802
        return ("Makes a Python environment for geors, once: a virtual environment in the QGIS profile folder "
                "(or the folder you choose), torch for this machine (the CPU-only build where no NVIDIA GPU "
                "is found, about 200 MB; else the CUDA build, about 2.5 GB), then geors from the wheel this "
                "plugin carries (or the checkout / URL given as Source), with segment-anything for SAM masks. "
                "It then checks the environment and makes it the plugin's environment, so every algorithm "
                "works without further settings. Every command and pip's whole output go to geors-setup.log "
                "in the environment folder. Cancel stops pip; running it again continues.\n\n"
                "Reuse the base Python's packages (advanced): the environment sees the packages of the Python "
                "that creates it (venv --system-site-packages), so torch and the other dependencies it already "
                "has are not downloaded again.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            "FOLDER", "Environment folder (empty: geors/venv in the QGIS profile folder)",
            behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterEnum("TORCH", "torch build", TORCH_LABELS, defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean("SAM", "Also install segment-anything (SAM masks)", True))
        advanced = [
            QgsProcessingParameterString(
                "SOURCE", "Install geors from (a wheel, a geors checkout folder or a git+https:// URL; empty: "
                "the wheel in this plugin, else the checkout it was built from)", optional=True),
            QgsProcessingParameterString("TORCH_INDEX_URL", "torch package index (replaces the torch build's "
                                                            "index)", optional=True),
            QgsProcessingParameterFile("BASE_PYTHON", "Python that creates the environment (3.11 or newer; "
                                                      "empty: QGIS's own Python, else python3 on PATH)",
                                       optional=True, fileFilter="All files (*)"),  # 'python' has no suffix
            QgsProcessingParameterBoolean("REUSE_PACKAGES", "Reuse the base Python's packages (torch included: "
                                                            "nothing is downloaded that it has)", False),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addOutput(QgsProcessingOutputString("ENVIRONMENT", "Environment folder"))
        self.addOutput(QgsProcessingOutputString("PYTHON", "Its Python"))
        self.addOutput(QgsProcessingOutputFile("LOG", "Set-up log"))
        self.addOutput(QgsProcessingOutputBoolean("OK", "READY"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Check installation report"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        folder = self.parameterAsFile(parameters, "FOLDER", context) or S.default_folder(
            QgsApplication.qgisSettingsDirPath())
        folder = os.path.abspath(os.path.expanduser(folder))
        source = (self.parameterAsString(parameters, "SOURCE", context) or "").strip() or install_source()
        reuse = self.parameterAsBool(parameters, "REUSE_PACKAGES", context)
        mode = S.TORCH_MODES[self.parameterAsEnum(parameters, "TORCH", context)]
        try:
            S.check_source(source)
            feedback.setProgressText("Looking for a Python 3.11+ to create the environment")
            base, facts = S.find_base_python(self.parameterAsFile(parameters, "BASE_PYTHON", context) or None,
                                             reuse_packages=reuse)
            gpu = S.nvidia_gpus()
            torch = S.choose_torch(mode, gpu, sys.platform,
                                   self.parameterAsString(parameters, "TORCH_INDEX_URL", context).strip() or None,
                                   base_has_torch=bool(facts.get("torch")), reuse_packages=reuse)
        except S.SetupError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(f"environment: {folder}")
        feedback.pushInfo(f"base Python: {base} ({'.'.join(map(str, facts['version']))})"
                          + (", its packages reused" if reuse else ""))
        feedback.pushInfo(f"GPU: {gpu.detail}")
        feedback.pushInfo(f"torch: {torch.reason}")
        feedback.pushInfo(f"geors from: {source}")
        extras = ("sam",) if self.parameterAsBool(parameters, "SAM", context) else ()
        plan = S.plan_setup(folder, base, source, torch, sys.platform, reuse, extras)
        result = S.run_setup(plan, feedback)
        if result.cancelled:
            raise QgsProcessingException(f"Cancelled during '{result.failed_step}'. Run Set up environment again "
                                         f"to continue (pip keeps what it finished). Log: {plan.log_path}")
        if not result.ok:
            raise QgsProcessingException(f"The step '{result.failed_step}' failed: "
                                         + " | ".join(result.errors)[-1500:]
                                         + f"\nThe whole output is in {plan.log_path}.")
        feedback.pushInfo(f"installed: geors {result.facts.get('geors')} ({result.facts.get('geors_file')}); "
                          + S.torch_summary(result.facts))
        store_environment(folder)
        self._stored = folder
        feedback.pushInfo(f"The plugin now uses this environment (setting 'geors Python environment' = {folder}).")
        feedback.setProgressText("Check installation")
        report = check_installation(folder, feedback)
        text = format_report(report)
        for line in text.splitlines():
            feedback.pushInfo(line)
        return {"ENVIRONMENT": folder, "PYTHON": plan.python, "LOG": plan.log_path, "OK": report["ok"],
                "REPORT": text}

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        """On the main thread: Processing's copy of the setting and the provider's algorithms follow the new
        environment (their dialogs are built from its CLI)."""
        if self._stored:
            sync_processing_setting()
            provider = QgsApplication.processingRegistry().providerById("geors")
            if provider is not None:
                provider.refreshAlgorithms()
        return {}
