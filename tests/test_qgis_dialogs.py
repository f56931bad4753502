"""The QGIS plugin's dialogs against the CLI they mirror (issue 28: "dialogs generated from the CLI's own
choices, so they cannot fall behind; a test compares them").

The plugin builds each dialog from the installed CLI's click objects (``environment.describe``, run in the
geors environment) and falls back to its own option tables (``options.TABLES``) when the environment cannot
be asked. These tests need no QGIS: they run the same description here and walk every click command, every
table and the mask engines, and fail when a dialog shows another default, another list of choices or another
kind of field than the option it claims to mirror.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import click
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "qgis_plugin"))

from geors_qgis import install_check  # noqa: E402
from geors_qgis import options as O  # noqa: E402
from geors_qgis.environment import _DESCRIBE  # noqa: E402

# CLI parameter type (click's name) -> the dialog field kinds that mirror it
KINDS = {"integer": {"int"}, "integer range": {"int"}, "float": {"float"}, "float range": {"float"},
         "choice": {"enum"}, "boolean": {"bool"}, "text": {"str", "multi"}, "path": {"str", "file"},
         "file": {"str", "file"}, "filename": {"str", "file"}, "directory": {"str"}}


@pytest.fixture(scope="module")
def cli() -> dict:
    """What the plugin reads from a geors environment: every command's options, the mask engines."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_DESCRIBE, "describe", "exec"), {})  # noqa: S102 (the plugin's own script, as it runs it)
    return json.loads(out.getvalue())


def _param(cli: dict, command: str, flag: str) -> dict:
    found = [p for p in cli[command]["params"] if p.get("flag") == flag]
    assert found, f"the dialog of 'geors {command}' has {flag}, which the CLI does not have"
    return found[0]


def _check(opt: O.Opt, p: dict, cli: dict, where: str, empty_ok: bool = False) -> None:
    """``opt`` (a dialog field) mirrors the CLI option ``p``: kind, choices, default, required. ``empty_ok``: a
    field of a fallback table may leave the default empty (nothing is passed, so the CLI's default applies)."""
    if opt.flag == O.SAM.flag:  # free text in the CLI (it also takes a checkpoint path); a list in the dialog
        assert opt.kind == "enum" and opt.choices == O.mask_engines(cli) and opt.default == "auto", where
        return
    if p["is_flag"]:
        assert opt.kind == "bool", where
    elif p["multiple"]:
        assert opt.kind == "multi", where
    else:
        assert opt.kind in KINDS[p["type"]], (where, opt.kind, p["type"])
    if p["type"] == "choice":
        assert list(opt.choices) == p["choices"], (where, opt.choices, p["choices"])
    cli_default = p["default"]
    if opt.flag in O.MODEL_DEFAULTS and opt.flag in ("--score-threshold",):
        # the dialog shows the model's value (or the CLI's documented 0.3 fallback); the CLI takes the model's
        assert cli_default is None, where
    elif p["is_flag"]:
        assert bool(opt.default) == bool(cli_default), (where, opt.default, cli_default)
    elif empty_ok and opt.default is None:
        pass
    elif opt.kind in ("int", "float") and cli_default is not None:
        assert opt.default is not None and float(opt.default) == pytest.approx(float(cli_default)), \
            (where, opt.default, cli_default)
    else:
        assert (None if opt.default in (None, "") else str(opt.default)) == \
            (None if cli_default in (None, "") else str(cli_default)), (where, opt.default, cli_default)
    assert opt.required == p["required"], (where, opt.required, p["required"])


def test_every_cli_option_becomes_a_field_of_the_same_kind_default_and_choices(cli):
    """Regression: click.IntRange/FloatRange options (--max-minutes, --patience, --val-fraction, ...) became
    free-text fields ('float range' was not a known type), required options (--small-classes) optional ones,
    and --sam a free-text field without 'watershed', the engine used by default."""
    seen = 0
    for command, spec in cli.items():
        if command.startswith("__"):
            continue
        fields = {o.flag: o for o in O.opts_from_description(cli, command, O.TABLES.get(command, ()))}
        for p in spec["params"]:
            flag = p.get("flag")
            if not flag or flag in O.HANDLED or p.get("hidden"):
                continue
            assert flag in fields, f"geors {command} {flag} has no dialog field"
            _check(fields[flag], p, cli, f"geors {command} {flag}")
            seen += 1
    assert seen > 150  # every command was walked
    run = {o.flag: o for o in O.opts_from_description(cli, "run", O.RUN)}
    assert "watershed" in run["--sam"].choices and run["--min-score"].kind == "float"


def test_fallback_tables_match_the_cli(cli):
    """The plugin's own tables (used when the environment cannot describe itself) claim to mirror these
    commands: each of their options must exist with the CLI's default, choices and kind. Regression: the
    training table had --epochs 10 and --crop 384 (the CLI: no --epochs, --crop 256) and no --max-minutes;
    detect's --batch-size 8 (the CLI: 2 on CPU, 8 on a GPU, i.e. no fixed default); its --lr 0.002 fell behind
    the CLI's 0.004 while this was written. A field left empty passes nothing: the CLI's default applies."""
    for command, table in O.TABLES.items():
        assert command in cli, f"the plugin has a table for 'geors {command}', which the CLI does not have"
        for opt in table:
            _check(opt, _param(cli, command, opt.flag), cli, f"table of geors {command}: {opt.flag}", empty_ok=True)


def test_training_dialogs_have_the_options_a_user_needs(cli):
    """Issue 25: the time budget with the CLI's default in both trainers; the segmenter's small classes (required),
    background and unlabelled meaning; the labelled area as a layer of its own."""
    for command in ("train detector", "train segmenter"):
        fields = {o.flag: o for o in O.opts_from_description(cli, command, O.TABLES[command])}
        budget = fields["--max-minutes"]
        assert budget.kind == "float" and budget.default == 10.0 and not budget.advanced
        assert budget.default == _param(cli, command, "--max-minutes")["default"]
    seg = {o.flag: o for o in O.opts_from_description(cli, "train segmenter", O.TRAIN_SEGMENTER,
                                                      ("--scene", "--labels", "--labelled-area"))}
    assert seg["--small-classes"].required and not seg["--small-classes"].advanced
    assert seg["--unlabelled"].kind == "enum" and seg["--unlabelled"].choices == ("auto", "background", "ignore")
    assert "--background" in seg and "--labelled-area" not in seg  # a vector layer parameter instead


def test_mask_engines_are_the_engines_geors_builds(cli):
    """The engine list comes from the geors mask engine classes and SAM_KINDS; each name is one that
    make_mask_engine accepts, each is named in the CLI's --sam help, and the plugin's fallback list is the same."""
    from geors.errors import ConfigError, ModelError
    from geors.masks.factory import make_mask_engine
    from geors.masks.sam import SAM_KINDS

    engines = cli["__engines__"]
    assert engines[0] == "auto" and "watershed" in engines and set(SAM_KINDS) <= set(engines)
    assert tuple(engines) == O.MASK_ENGINES
    for name in engines:
        if name in SAM_KINDS or name == "auto":
            continue
        assert make_mask_engine(name).method == name
    for name in SAM_KINDS:  # no checkpoint here: a missing-weights error, not an unknown engine
        with contextlib.suppress(ModelError):
            make_mask_engine(name)
    with pytest.raises(ConfigError):
        make_mask_engine("no-such-engine")
    for command in ("run", "masks", "label"):
        text = " ".join(_param(cli, command, "--sam")["help"].split())
        missing = [n for n in engines if n not in text]
        assert not missing, f"geors {command} --help does not name the engines {missing}"


def test_sam_choice_passes_engine_names(cli):
    opt = {o.flag: o for o in O.opts_from_description(cli, "masks", O.MASKS)}["--sam"]
    assert opt.args(opt.choices.index("watershed")) == ["--sam", "watershed"]
    assert opt.args("auto") == []  # the default is not passed


def test_descriptions_name_the_default_engine():
    """Regression: 'Run pipeline' said masks came from 'SAM, GrabCut or the box'; the default without SAM is the
    watershed outline."""
    text = (Path(__file__).resolve().parents[1] / "qgis_plugin" / "geors_qgis" / "algorithms.py").read_text()
    assert "SAM, GrabCut or the box" not in text and "(GrabCut is used)" not in text
    assert "watershed" in text


def test_cuda_advice_follows_the_torch_build():
    """Regression: Check installation advised installing a cu121 torch whenever no GPU was usable, also when the
    installed torch already was a CUDA build (then the driver or the machine is the matter)."""
    pip = "/env/bin/python -m pip install"
    cuda_build = install_check.cuda_item({"torch": "2.3", "cuda": False, "cuda_build": "12.1"}, pip)
    assert "pip install" not in cuda_build["fix"] and "CUDA 12.1 build" in cuda_build["detail"]
    assert "driver" in cuda_build["fix"]
    cpu_build = install_check.cuda_item({"torch": "2.3", "cuda": False, "cuda_build": None}, pip)
    assert "CPU-only" in cpu_build["detail"] and pip in cpu_build["fix"] and "--index-url" in cpu_build["fix"]
    ok = install_check.cuda_item({"torch": "2.3", "cuda": True, "cuda_build": "12.1", "cuda_device": "A100"}, pip)
    assert ok["status"] == "ok" and not ok["fix"]


def test_click_objects_are_what_describe_reads():
    """describe walks the click group; a command added to the CLI shows up (no list to keep in step)."""
    from geors.cli.main import main

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_DESCRIBE, "describe", "exec"), {})  # noqa: S102
    described = {k for k in json.loads(out.getvalue()) if not k.startswith("__")}
    assert described == set(walk(main, []))


def test_plugin_only_parameters_are_named_like_no_cli_option(cli):
    """EXTENT, RESOLUTION and KEEP_EXPORT (how a layer that is not a file is exported, layer_export.py) are the
    plugin's own parameters, not CLI options, so the walks above do not cover them: no CLI option (nor a
    fallback table's) may take one of their names, or its field would be shadowed."""
    from geors_qgis.raster_source import EXPORT_PARAMETERS

    for command, spec in cli.items():
        if command.startswith("__"):
            continue
        names = {O.Opt(p["flag"], "str", "").name for p in spec["params"] if p.get("flag")}
        assert not names & set(EXPORT_PARAMETERS), (command, names & set(EXPORT_PARAMETERS))
    for table in O.TABLES.values():
        assert not {o.name for o in table} & set(EXPORT_PARAMETERS)
