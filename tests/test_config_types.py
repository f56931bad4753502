"""TOML values are type-checked like CLI options (issue 26, finding 7): a wrong type is one message, exit 2,
naming the file, the key and the expected type, before any output exists."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

from geors.cli.main import main
from geors.config import ExecutionConfig, PipelineConfig, TilingConfig
from geors.errors import ConfigError

import scenes


def geors(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("section,line,expected", [
    ("output", 'overwrite = "false"', "[output] overwrite = \"false\": expected true or false"),
    ("output", 'resume = "yes"', "[output] resume = \"yes\": expected true or false"),
    ("detect", 'use_gate = "no"', "[detect] use_gate = \"no\": expected true or false"),
    ("tiling", "bands = [true, 2, 3]", "[tiling] bands = [true, 2, 3]: expected a list of integers"),
    ("execution", "threads = true", "[execution] threads = true: expected an integer"),
    ("segment", "segmenter = 5", "[segment] segmenter = 5: expected a text in quotes"),
    ("tiling", "tile_size = 256.0", "[tiling] tile_size = 256.0: expected an integer"),
])
def test_a_toml_value_of_the_wrong_type_is_refused_by_name(tmp_path, section, line, expected):
    # regression: overwrite = "false" acted as true (a scene's rows were replaced), resume = "yes" and
    # use_gate = "no" were taken as true, bands = [true, 2, 3] was accepted, threads = true crashed
    toml = tmp_path / "run.toml"
    toml.write_text(f"[{section}]\n{line}\n")
    r = geors("tiles", scenes.rgb_uint8(tmp_path / "s.tif", 300, 300), "-o", tmp_path / "t.gpkg", "--config", toml)
    assert r.exit_code == 2, r.output
    assert f"{toml}: {expected}" in r.output
    assert not (tmp_path / "t.gpkg").exists()


def test_overwrite_false_as_text_never_replaces_rows(tmp_path):
    scene = scenes.rgb_uint8(tmp_path / "s.tif", 300, 300)
    out = tmp_path / "t.gpkg"
    assert geors("tiles", scene, "-o", out).exit_code == 0
    con = sqlite3.connect(out)
    run_ids = con.execute("SELECT run_id FROM geors_tiles").fetchall()
    con.close()
    toml = tmp_path / "run.toml"
    toml.write_text('[output]\noverwrite = "false"\n')
    assert geors("tiles", scene, "-o", out, "--config", toml).exit_code == 2
    con = sqlite3.connect(out)
    assert con.execute("SELECT run_id FROM geors_tiles").fetchall() == run_ids
    con.close()


def test_a_binary_config_is_one_message(tmp_path):
    # regression: a UnicodeDecodeError traceback
    toml = tmp_path / "run.toml"
    toml.write_bytes(bytes(range(256)) * 4)
    r = geors("tiles", scenes.rgb_uint8(tmp_path / "s.tif", 300, 300), "-o", tmp_path / "t.gpkg", "--config", toml)
    assert r.exit_code == 2 and f"{toml}: --config is not a text file" in r.output, r.output


def test_python_api_switches_and_numbers_are_typed_too():
    with pytest.raises(ConfigError, match="--threads = true: expected an integer"):
        PipelineConfig(execution=ExecutionConfig(threads=True)).validate()
    with pytest.raises(ConfigError, match="--bands"):
        PipelineConfig(tiling=TilingConfig(bands=(True, 2, 3))).validate()


@pytest.mark.parametrize("reader", ["pipeline", "run", "detector", "segmenter"])
def test_every_toml_reader_refuses_unreadable_files_alike(tmp_path, reader):
    """One TOML reader (config.read_toml): a folder, a binary file or bad TOML is a ConfigError naming the file,
    for the training configs too (they raised IsADirectoryError / UnicodeDecodeError before)."""
    from geors.train.api import TrainingRun
    from geors.train.detector import TrainConfig
    from geors.train.segmenter import SegTrainConfig

    read = {"pipeline": PipelineConfig.from_toml, "run": TrainingRun.from_toml, "detector": TrainConfig.from_toml,
            "segmenter": SegTrainConfig.from_toml}[reader]
    binary = tmp_path / "weights.toml"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    for path, words in [(tmp_path, "is a folder"), (binary, "is not a text file"), (bad, "is not valid TOML"),
                        (tmp_path / "missing.toml", "file not found")]:
        with pytest.raises(ConfigError, match=words) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: ")


def test_toml_value_round_trips_through_tomllib():
    """The one TOML writer: tables with keys that need quotes, None as "none", escapes."""
    import tomllib

    from geors.config import toml_value

    value = {"red maple": 1, "x.y": [1.5, True], "n": None, "q": 'say "hi" \\ ok'}
    assert tomllib.loads(f"k = {toml_value(value)}")["k"] == {**value, "n": "none"}
