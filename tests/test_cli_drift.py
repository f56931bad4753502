"""The CLI and the text around it cannot drift apart (issue 28: "options listed vs options that act").

- every option a command lists is read by the code that command runs (its function and the geors.cli
  helpers it calls: parameters used, keys read from the parameter dict, keys of the tables it walks);
- every option of the pixel-reading and training commands acts: set to another value it changes what the
  command hands to the library (the pipeline's stage and configuration, ``write_label_raster``'s arguments,
  the training run), or writes its file (``--save-config``). The options that say how a model runs
  (device, batch size, workers, scheduler, threads) count only where the stage holds a device, i.e. runs a
  model: ``geors tiles`` offered them and they changed nothing but how many tiles share a transaction;
- a command that takes one SCENE offers no option about several scenes (``geors label --per-scene``);
- no two commands share a help text (``train gate`` repeated ``train detector``'s);
- the README's command list is the CLI's, and every ``--option`` written after ``geors CMD`` in the README
  and docs/ exists in that command; the shared options are listed for exactly the commands that have them;
- the exit codes in ``geors --help``, the README and docs/cli.md are those the code can return;
- the README's set-up and test commands are those CI runs (.ci/run), its clone URL is the project's, the
  GDAL_CACHEMAX it quotes is the CLI's, and ``.venv/`` is git-ignored.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from geors.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def leaf_commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    """``{"detect": <Command>, "train gate": <Command>, ...}``: every command that runs something."""
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            out.update(leaf_commands(cmd, path + " "))
        else:
            out[path] = cmd
    return out


COMMANDS = leaf_commands()


def option_flags(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)
            if o.startswith("--")}


# ------------------------------------------------------------------------------ read by the command's code


def code_reads(fn, seen: set | None = None) -> set[str]:
    """Names the code of ``fn`` reads: its parameters that its body uses, string keys it reads from dicts
    (``p["x"]``, ``p.get("x")``, ``"x" in p``), the keys of the module tables it uses, and the same for every
    geors.cli function it calls."""
    seen = set() if seen is None else seen
    fn = inspect.unwrap(fn)
    if fn in seen:
        return set()
    seen.add(fn)
    fdef = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    body = fdef.body
    loads = {n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    args = fdef.args
    reads = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg in loads}
    for stmt in body:
        for node in ast.walk(stmt):
            key = None
            if isinstance(node, ast.Subscript):
                key = node.slice
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "get", "pop") and node.args:
                key = node.args[0]
            elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
                key = node.left
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                reads.add(key.value)
    scope = inspect.getclosurevars(fn)
    for name in loads:
        obj = scope.nonlocals.get(name, scope.globals.get(name))
        if isinstance(obj, dict):
            reads |= {k for k in obj if isinstance(k, str)}
        elif inspect.isfunction(obj) and obj.__module__.startswith("geors.cli"):
            reads |= code_reads(obj, seen)
    return reads


def unread_options(cmd: click.Command) -> list[str]:
    reads = code_reads(cmd.callback)
    return [p.opts[0] if p.opts else p.name for p in cmd.params if p.name not in reads]


def test_the_read_check_finds_an_option_nobody_reads():
    """The check below is not vacuous: an option the command never reads is found, one read through
    ``**params`` or a table is not."""

    table = {"tabled": 1}

    @click.command()
    @click.option("--used")
    @click.option("--dead")
    @click.option("--via-kwargs")
    @click.option("--tabled")
    def cmd(used, dead, **params):
        print(used, params["via_kwargs"], [k for k in table if k in params])

    assert unread_options(cmd) == ["--dead"]


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_is_read_by_its_command(path):
    assert unread_options(COMMANDS[path]) == [], f"geors {path} lists options its code never reads"


# ------------------------------------------------------------------------------ options act


class Captured(Exception):  # noqa: N818 - not an error: the point where the command hands over its work
    def __init__(self, **what):
        super().__init__("captured")
        self.what = what


def _state(obj) -> dict:
    """A stage's public attributes (sub-stages of a group included), as text."""
    if hasattr(obj, "stages"):
        return {"stages": [_state(s) for s in obj.stages]}
    return {k: repr(v) for k, v in vars(obj).items() if not k.startswith("_")}


def _runs_model(stage) -> bool:
    return any(_runs_model(s) for s in stage.stages) if hasattr(stage, "stages") else hasattr(stage, "device")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny georeferenced scene, boxes (fields class and kind, layer 'boxes'), a class map, config files."""
    import geopandas as gpd
    import rasterio
    import shapely

    from tests import scenes

    d = tmp_path_factory.mktemp("drift")
    scene = scenes.small_scene(d / "s.tif")
    with rasterio.open(scene) as ds:
        b, crs = ds.bounds, ds.crs
    boxes = d / "boxes.gpkg"
    gpd.GeoDataFrame({"class": ["a"], "kind": ["k"]},
                     geometry=[shapely.box(b.left + 0.005, b.bottom + 0.005, b.left + 0.008, b.bottom + 0.008)],
                     crs=crs).to_file(boxes, layer="boxes")
    (d / "classes.json").write_text(json.dumps({"a": 3}))
    (d / "run.toml").write_text("[tiling]\ntile_size = 320\n")
    (d / "train.toml").write_text("lr = 0.001\n")
    return d


def _values(d: Path) -> dict[str, list[str]]:
    """A value other than the default for each option (with what it needs besides)."""
    model = str(ROOT / "geors" / "models" / "weights" / "r2cnn_neon_trees.safetensors")
    return {
        # pixel-reading commands
        "--config": [str(d / "run.toml")], "--save-config": [str(d / "saved.toml")], "--tile": ["320"],
        "--overlap": ["32"], "--bands": ["3,2,1"], "--device": ["cpu"], "--batch-size": ["3"], "--workers": ["2"],
        "--scheduler": ["synchronous"], "--threads": ["1"], "--resume": [], "--overwrite": [], "--strict": [],
        "--crs": ["EPSG:3857"], "--per-scene": [], "--progress": ["jsonl"], "--no-stats": [],
        "--model": ["r2cnn-neon-trees"], "--gate-threshold": ["0.5"], "--no-gate": [], "--score-threshold": ["0.45"],
        "--min-score": ["0.05"], "--sam": ["box"], "--simplify": ["1.5"], "--segmenter": ["c2fnet-neon-dota"],
        "--raster-out": [str(d / "classes.tif")], "--class-field": ["kind"], "--layer": ["boxes"],
        "--all-parts": [], "--class-map": [str(d / "classes.json")], "--instances": [str(d / "ids.tif")],
        "--masks-out": [str(d / "masks.gpkg")], "--order": ["smaller_first"],
        # training
        "--empty-scene": [str(d / "s.tif")], "--init-from": [model], "--rename-class": ["a=b"], "--gsd": ["0.2"],
        "--scales": ["0.75,1"], "--arch": ["roi_ohem=8"], "--name": ["other"], "--gate-pool": ["avg"],
        "--classes": ["a,b"], "--background": ["ground"], "--labelled-area": [str(d / "boxes.gpkg")],
        "--empty-negatives": [], "--corrections": [str(d / "boxes.gpkg")], "--reviewed-area": [str(d / "boxes.gpkg")],
    }


def _other_value(p: click.Option, values: dict[str, list[str]]) -> list[str] | None:
    flag = p.opts[0] if p.opts[0].startswith("--") else p.opts[-1]
    if flag in values:
        return values[flag]
    if p.is_flag and not p.default:
        return []
    if isinstance(p.type, click.Choice):
        return [next(c for c in p.type.choices if c != str(p.default))]
    if isinstance(p.type, click.types.IntParamType | click.types.FloatParamType):
        d = p.default
        tries = [2, 3] if d is None else ([d + 1, d * 2, 2] if isinstance(p.type, click.types.IntParamType)
                                           else [d / 2, d + 0.05, 0.05, 1.0])
        for v in tries:
            try:
                if v != d and p.type.convert(v, p, None) == v:
                    return [str(v)]
            except click.BadParameter:
                pass
    return None


def _base(path: str, d: Path, flag: str = "") -> list[str]:
    """The command with what it needs to run, as the baseline for ``flag``."""
    scene, boxes = str(d / "s.tif"), str(d / "boxes.gpkg")
    out = {"label": str(d / "labels.tif")}.get(path, str(d / "out.gpkg"))
    if path in TRAIN_COMMANDS:
        extra = ["--small-classes", "a"] if path == "train segmenter" else []
        labels = [] if flag in ("--corrections", "--reviewed-area") else ["--labels", boxes]  # corrections are
        return [*path.split(), "--scene", scene, *labels, "-o", str(d / "model.safetensors"), *extra]  # the labels
    return [path, scene, "-o", out, *(["--boxes", boxes] if path in ("masks", "label") else [])]


# what an option needs besides itself to act (its effect shows only with this)
NEEDS = {("run", "--raster-out"): ["--segmenter", "c2fnet-neon-dota"],
         **{(t, "--reviewed-area"): ["--corrections", "{d}/boxes.gpkg"] for t in ("train detector", "train gate")}}
PIXEL_COMMANDS = ("detect", "run", "segment", "tiles", "masks", "label")
TRAIN_COMMANDS = ("train detector", "train gate", "train segmenter")


@pytest.fixture
def handed_over(monkeypatch, inputs):
    """``handed_over(args)``: run ``geors ARGS`` up to the point where it hands its work to the library (the
    pipeline's ``process_scenes``, ``write_label_raster``, ``train_run``); what it hands over."""
    import geors.pipeline
    import geors.samrs
    import geors.train.api

    label_args: dict = {}
    real_label = geors.samrs.write_label_raster

    def label(*a, **kw):
        label_args.update({k: repr(v) for k, v in kw.items() if k not in ("progress", "cancel", "config")})
        return real_label(*a, **kw)

    def process_scenes(scenes, out, stage, config, progress=None, cancel=None, command=""):
        cfg = config.to_dict()
        if not _runs_model(stage):
            cfg.pop("execution")
        raise Captured(stage=_state(stage), config=cfg, progress=type(progress).__name__, out=str(out))

    def train_run(run, output, progress=None, **kw):
        raise Captured(run=run.to_dict(), output=str(output), progress=type(progress).__name__)

    monkeypatch.setattr(geors.pipeline, "process_scenes", process_scenes)
    monkeypatch.setattr(geors.samrs, "write_label_raster", label)
    monkeypatch.setattr(geors.train.api, "train_run", train_run)

    def run(args: list[str]) -> dict:
        label_args.clear()
        for f in inputs.glob("saved*.toml"):
            f.unlink()
        r = CliRunner().invoke(main, args)
        assert isinstance(r.exception, Captured), (args, r.output, r.exception)
        return {**r.exception.what, "label": dict(label_args),
                "saved": sorted(f.name for f in inputs.glob("saved*.toml"))}

    return run


@pytest.mark.parametrize("path", [*PIXEL_COMMANDS, *TRAIN_COMMANDS])
def test_every_option_acts(path, inputs, handed_over):
    """Each option, given another value than its default, changes what the command hands to the library.
    Before issue 28's fix: geors tiles --device/--batch-size/--workers/--scheduler/--threads changed nothing."""
    d = inputs
    values = _values(d)
    if path in TRAIN_COMMANDS:
        values["--config"] = [str(d / "train.toml")]
    cmd = COMMANDS[path]
    dead, unknown = [], []
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.required or p.name == "help" or set(p.opts) & set(_base(path, d)):
            continue  # required or given in every run: nothing to compare with
        value = _other_value(p, values)
        if value is None:
            unknown.append(p.opts[0])
            continue
        flag = p.opts[0] if p.opts[0].startswith("--") else p.opts[-1]
        base = _base(path, d, flag)
        needs = [a.format(d=d) for a in NEEDS.get((path, flag), [])]
        before = handed_over([*base, *needs])
        after = handed_over([*base, *needs, flag, *value])
        if after == before:
            dead.append(flag)
    assert unknown == [], f"give these options of geors {path} a non-default value in _values()"
    assert dead == [], f"geors {path}: these options change nothing"


def test_one_scene_commands_offer_no_options_about_several_scenes():
    """``geors label`` takes one SCENE (opened before anything else): --per-scene and --strict did nothing
    there (before issue 28's fix it listed both)."""
    several = {"--per-scene", "--strict"}
    for path, cmd in COMMANDS.items():
        scenes = [p for p in cmd.params if isinstance(p, click.Argument) and p.name in ("scene", "scenes")]
        if scenes and scenes[0].nargs == 1:
            assert option_flags(cmd) & several == set(), f"geors {path} takes one scene"


def test_no_two_commands_share_a_help_text():
    """Regression: `geors train gate --help` was `train detector`'s."""
    by_help: dict[str, list[str]] = {}
    for path, cmd in COMMANDS.items():
        by_help.setdefault(" ".join((cmd.help or "").split()), []).append(path)
    assert [paths for paths in by_help.values() if len(paths) > 1] == []


def test_models_info_help_says_what_json_changes():
    """Regression: `models info` said "as JSON" and offered --json without saying what it changes. Plain
    output is indented JSON, --json one line that adds the model file's metadata; the help says both."""
    runner = CliRunner()
    plain = runner.invoke(main, ["models", "info", "r2cnn-neon-trees"])
    js = runner.invoke(main, ["models", "info", "r2cnn-neon-trees", "--json"])
    assert plain.exit_code == js.exit_code == 0
    assert len(plain.output.strip().splitlines()) > 1 and len(js.output.strip().splitlines()) == 1
    assert "metadata" in json.loads(js.output) and "metadata" not in json.loads(plain.output)
    cmd = COMMANDS["models info"]
    text = " ".join(cmd.help.split())
    json_help = " ".join(next(p for p in cmd.params if p.name == "as_json").help.split())
    assert "indented JSON" in text and "one line" in (text + json_help) and "metadata" in json_help


# ------------------------------------------------------------------------------ README and docs


def readme_commands_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Commands"):]
    return re.search(r"```\n(.*?)```", section, flags=re.S).group(1)


def readme_command_lines() -> dict[str, str]:
    """``{"run": "<its text, continuation lines joined>", ...}`` from the README's command list."""
    block = readme_commands_block().split("\nEvery command")[0]
    entries: list[str] = []
    for line in block.splitlines():
        if line.startswith("geors "):
            entries.append(line)
        elif line.startswith(" ") and entries:
            entries[-1] += " " + line.strip()
    out: dict[str, str] = {}
    for entry in entries:
        words = entry.split()
        top = words[1]
        if isinstance(main.commands.get(top), click.Group):
            subs = re.split(r" --| \[|  ", entry[len(f"geors {top} "):])[0]
            for alt in subs.split("|"):
                out[f"{top} {alt.split()[0]}"] = entry
        else:
            out[top] = entry
    return out


def shared_option_blocks() -> list[tuple[set[str], set[str]]]:
    """The README's "Every command that ... (A, B) also takes:" blocks: (commands, options)."""
    found = re.findall(r"^(?:Every command|Those) that [^(\n]*\(([^);]+)[^)]*\) also takes?:\n((?:  .*\n)+)",
                       readme_commands_block(), flags=re.M)
    return [({c.strip() for c in names.split(",")}, set(re.findall(r"--[a-z][a-z-]*", opts)))
            for names, opts in found]


def test_readme_lists_every_command_and_no_other():
    """Regression: `geors train gate` was missing from the README's command list."""
    assert set(readme_command_lines()) == set(COMMANDS)


def test_readme_options_are_the_commands_options():
    """Every option on a command's line exists; the shared blocks name exactly the commands that have
    their options. Regression: tiles was listed with --device/--batch-size/--workers, label with
    --per-scene, which did nothing there."""
    lines = readme_command_lines()
    for path, entry in lines.items():
        missing = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", entry)) - option_flags(COMMANDS[path])
        assert missing == set(), f"README: geors {path} has no {sorted(missing)}"
    blocks = shared_option_blocks()
    assert len(blocks) >= 2
    shared = set().union(*(opts for _, opts in blocks))
    pixel = set().union(*(names for names, _ in blocks))
    assert pixel == set(PIXEL_COMMANDS)
    for path in pixel:
        documented = set().union(*(opts for names, opts in blocks if path in names))
        assert documented == option_flags(COMMANDS[path]) & shared, f"README's shared options of geors {path}"


CODE_SPAN = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", flags=re.S)
GEORS_CALL = re.compile(r"(?:^|[\s(])geors((?:\s+-[a-z]+)*)\s+([a-z][a-z-]*)(?:\s+([a-z][a-z|-]*))?(.*)")


def written_calls(text: str):
    """``(command words, options)`` for every ``geors CMD ... --opt`` in the code of a Markdown text."""
    for m in CODE_SPAN.finditer(text):
        code = (m.group(1) or m.group(2) or "").replace("\\\n", " ")
        for line in code.splitlines():
            for part in re.split(r" \| | && | ; |\s#\s", line):
                g = GEORS_CALL.search(part)
                if g:
                    yield g.group(2), g.group(3), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", g.group(4) or "")


def test_options_written_in_readme_and_docs_exist():
    """Every ``--option`` written after ``geors CMD`` (README, docs/*.md) is an option of that command (after a
    group alone: of one of its commands)."""
    wrong = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for top, sub, opts in written_calls(page.read_text(encoding="utf-8")):
            if not opts or top not in main.commands:
                continue
            cmd = main.commands[top]
            if isinstance(cmd, click.Group):
                names = [s for s in (sub or "").split("|") if s]
                if not names:  # `geors train --init-from`: an option of one of the group's commands
                    have = set().union(*(option_flags(c) for c in cmd.commands.values()))
                    wrong += [(page.name, top, o) for o in opts if o not in have]
                    continue
                for n in names:
                    if n not in cmd.commands:
                        wrong.append((page.name, f"{top} {n}", "no such command"))
                        continue
                    wrong += [(page.name, f"{top} {n}", o) for o in opts if o not in option_flags(cmd.commands[n])]
            else:
                wrong += [(page.name, top, o) for o in opts if o not in option_flags(cmd) | {"--help"}]
    assert wrong == []


def test_the_written_calls_parser_reads_what_it_should():
    text = ("`geors run a.tif -o b --sam box | jq .` and\n```bash\ngeors -v train detector --scene S \\\n"
            "  --crop 256 -o m  # comment --not\n```\n`geors train --gate-scale` `geors models list`")
    assert list(written_calls(text)) == [("run", "a", ["--sam"]), ("train", "detector", ["--scene", "--crop"]),
                                         ("train", None, ["--gate-scale"]), ("models", "list", [])]


def exit_codes(text: str) -> set[int]:
    m = re.search(r"Exit codes:(.*?)(?:\.\s|\n\n|$)", " ".join(text.split()) + "\n\n", flags=re.S)
    assert m, "no 'Exit codes:' sentence"
    return {int(c) for c in re.findall(r"(?<![\w.])(\d+) [a-z]", m.group(1))}


def codes_the_code_returns() -> set[int]:
    """0, the exit code of every geors.errors class, and every literal ``SystemExit(N)`` in geors/cli."""
    from geors.errors import GeorsError

    codes = {0}
    todo = [GeorsError]
    while todo:
        cls = todo.pop()
        codes.add(cls.exit_code)
        todo += cls.__subclasses__()
    for path in (ROOT / "geors" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("SystemExit", "exit") and \
                    node.args and isinstance(node.args[0], ast.Constant):
                codes.add(node.args[0].value)
    return codes


def test_exit_codes_in_help_readme_and_docs_are_the_codes_returned():
    """Regression: `geors --help` listed 0, 1, 2 but a cancelled run exits 130."""
    help_text = CliRunner().invoke(main, ["--help"]).output
    code = codes_the_code_returns()
    assert code >= {0, 1, 2, 130}
    assert exit_codes(help_text) == code
    assert exit_codes(README.read_text(encoding="utf-8")) == code
    assert exit_codes((DOCS / "cli.md").read_text(encoding="utf-8")) == code


def test_readme_gdal_cachemax_is_what_the_cli_sets():
    """Regression: the README said 128 MB, the CLI sets 64."""
    from geors.raster import RECOMMENDED_GDAL_CACHEMAX_MB

    text = README.read_text(encoding="utf-8")
    said = re.findall(r"the CLI sets (\d+) MB", text)
    example = re.findall(r'setdefault\("GDAL_CACHEMAX", "(\d+)"\)', text)
    assert said and example
    assert {int(v) for v in said + example} == {RECOMMENDED_GDAL_CACHEMAX_MB}


def _setup_block() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Set-up"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_setup_is_what_ci_runs():
    """Regression: the README installed `.[dev]` (no mkdocs, matplotlib: its "whole suite" skipped the docs
    tests), CI `.[dev,docs]`."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip().startswith(("python3 -m pip install", "python3 -m pytest"))]
    assert ci and _setup_block() == ci


def test_readme_says_where_to_clone_from():
    """Regression: "Clone the repository" without saying which (README set-up, docs/quickstart.md); the URL is
    the one the project records."""
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    meta = (ROOT / "qgis_plugin" / "geors_qgis" / "metadata.txt").read_text(encoding="utf-8")
    assert f"repository={urls['Repository']}" in meta.splitlines()
    text = README.read_text(encoding="utf-8")
    setup = text[text.index("## Set-up"):text.index("```bash", text.index("## Set-up"))]
    assert f"git clone {urls['Repository']}" in setup
    quick = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    install = quick[quick.index("## Install"):quick.index("\n## ", quick.index("## Install") + 3)]
    assert f"git clone {urls['Repository']}" in install


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_readme_venv_is_git_ignored():
    """Regression: the README's `.venv` showed up as thousands of untracked files."""
    assert ".venv" in " ".join(_setup_block() + [README.read_text(encoding="utf-8")[:3000]])
    r = subprocess.run(["git", "check-ignore", "-q", ".venv/"], cwd=ROOT)
    assert r.returncode == 0
