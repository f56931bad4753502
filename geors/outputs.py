"""What an output already holds, and the rules that keep runs from mixing into it.

Read-only checks made before the output is opened for writing: a scene already
in the ledger needs ``--resume`` or ``--overwrite``; ``--resume`` needs the same
raster (fingerprint) and the same result-affecting options; an output is never
an input; ``--per-scene`` names one GeoPackage per scene.

Once every check has passed, the same rules applied to the open files
(:func:`open_writers`, :func:`begin_run`, :func:`tiles_left`,
:func:`close_writers`): under each writer's creation lock a run of the same
scenes still writing is refused, ``--overwrite`` deletes the scenes' rows,
``--resume`` marks abandoned runs interrupted and skips the tiles already
written, and every run ends with its status recorded.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

from geors.config import OutputConfig
from geors.errors import OutputError
from geors.inputs import FINGERPRINT_VERSION
from geors.paths import check_outputs_not_inputs
from geors.raster import Scene
from geors.stage_contract import Stage
from geors.tiling import Tile
from geors.vector import GeoPackageWriter

__all__ = ["read_output_state", "result_key", "check_continuation", "resolve_outputs", "check_raster_output",
           "RESUME_KEYS", "open_writers", "begin_run", "tiles_left", "close_writers"]

# The option a user changes for each result-affecting key (the key is everything the stage describes, except
# the provenance-only keys below); a key not listed here is named as it is.
RESUME_KEYS = {
    "stage": "the command", "layers": "the command (geors detect writes detections; geors run with --sam also "
    "instances)", "tile_size": "--tile", "overlap": "--overlap", "bands": "--bands",
    "model": "--model", "model_sha256": "--model (the file's content)", "classes": "--model (its class names)",
    "gate_threshold": "--gate-threshold / --no-gate", "score_threshold": "--score-threshold",
    "mask_method": "--sam", "mask_checkpoint_sha256": "--sam (the SAM checkpoint's content)",
    "segmenter": "--segmenter", "segmenter_sha256": "--segmenter (the file's content)",
    "segmenter_classes": "--segmenter (its class names)", "segmenter_colours": "--segmenter (its colours)",
    "boxes": "--boxes", "boxes_sha256": "--boxes (the file's content)", "class_field": "--class-field", "layer": "--layer",
    "simplify_px": "--simplify", "multipart": "--all-parts", "with_stats": "--no-stats",
}

# Provenance that does not change what is written: where a file was found (its content is keyed by sha256).
_NOT_RESULT_KEYS = frozenset({"model_path", "mask_checkpoint", "segmenter_path"})


def read_output_state(path: Path) -> dict:
    """Read-only look at an existing output (after recovering a hot journal).

    Returns:
        ``scenes``: committed (not failed) tiles per scene; ``done``: scene -> tile id -> window
        ``(col_off, row_off, width, height)``; ``runs``: the recorded runs with their config and models.
    """
    import sqlite3

    state = {"scenes": {}, "runs": [], "done": {}}
    if not path.is_file() or path.stat().st_size == 0:
        return state
    from geors.gpkg import recover_hot_journal
    from geors.ledger import finished_tiles, read_runs

    recover_hot_journal(path)
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return state
    try:
        tables = {r[0].lower() for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "geors_tiles" in tables:
            state["done"] = finished_tiles(con)
            state["scenes"] = {scene: len(tiles) for scene, tiles in state["done"].items()}
        if "geors_runs" in tables:
            state["runs"] = read_runs(con)
    except sqlite3.DatabaseError:
        pass  # the writer's own check names the problem
    finally:
        con.close()
    return state


def _flat(info: dict, stage: Stage) -> dict:
    """One level: a stage group describes each of its stages under the stage's name."""
    names = {s.name for s in getattr(stage, "stages", ())}
    out = {}
    for k, v in info.items():
        if k in names and isinstance(v, dict):
            out.update(v)
        else:
            out[k] = v
    return out


def result_key(stage: Stage, tiling: tuple[int, int], bands, info: dict | None = None) -> dict:
    """The result-affecting facts of a run (recorded; compared on ``--resume``): the stage and the layers it
    writes, the tiling, the bands, and everything the stage describes (``info``: its ``describe()``, computed
    once per run by the caller because it hashes model files) except where files were found.

    Values are as JSON gives them back (tuples as lists), so a recorded key compares equal to a new one."""
    info = _flat(stage.describe() if info is None else info, stage)
    key = {"stage": stage.name, "layers": list(stage.layers), "tile_size": tiling[0], "overlap": tiling[1],
           "bands": list(bands) if bands else None}
    key.update({k: v for k, v in info.items() if k not in _NOT_RESULT_KEYS and k not in key})
    return json.loads(json.dumps(key, default=str))


def check_continuation(path: Path, state: dict, scenes: list[Scene], fingerprints: dict, key: dict,
                        resume: bool, overwrite: bool, grids: dict | None = None) -> None:
    """Refuse silent duplicates and resumes that would mix other scenes or other options into a file."""
    for scene in scenes:
        n = state["scenes"].get(scene.name, 0)
        if not n:
            continue
        if not resume and not overwrite:
            raise OutputError(
                f"{path} already holds results for scene {scene.name} ({n} tiles). Running it again would "
                "duplicate every feature: add --resume to continue that run, --overwrite to replace that "
                "scene's results, or write to another output.")
        if not resume:
            continue
        recorded = [r for r in state["runs"] if any(
            isinstance(s, dict) and s.get("name") == scene.name for s in r["config"].get("scenes", []))]
        if recorded:
            _check_recorded(path, scene, recorded[-1], fingerprints, key)
        done = state.get("done", {}).get(scene.name, {})
        if grids is not None and done:
            other = next((t.id for t in grids[scene.name] if t.id in done and done[t.id] != (
                t.col_off, t.row_off, t.width, t.height)), None)
            if other is not None:
                raise OutputError(
                    f"{path}: --resume found ledger rows for {scene.name} made with another tile grid (tile "
                    f"{other}); use the same --tile/--overlap as before or a new output.")


def _check_recorded(path: Path, scene: Scene, last: dict, fingerprints: dict, key: dict) -> None:
    """The scene is the raster the last run recorded, and the result-affecting options are the same."""
    rec_scene = next(s for s in last["config"]["scenes"] if isinstance(s, dict) and s.get("name") == scene.name)
    if rec_scene.get("fingerprint") and rec_scene.get("fingerprint_version") != FINGERPRINT_VERSION:
        raise OutputError(
            f"{path}: --resume: scene {scene.name} was recorded by an older geors whose scene fingerprint "
            "(the first 64 KiB) cannot tell whether the raster is the same. Finish that run with the geors "
            "that started it, or write to another output.")
    if rec_scene.get("fingerprint") and rec_scene["fingerprint"] != fingerprints[scene.name]:
        raise OutputError(
            f"{path}: --resume: scene {scene.name} ({scene.path}) is not the raster this output was made "
            f"from ({rec_scene.get('path')}): size, grid, CRS or content differ. Use the same file, "
            "or write to another output.")
    old = last["config"].get("result_key")
    if old is None:  # recorded by a geors that kept no options: the ledger's tile windows are compared
        return
    missing = object()
    diff = [k for k in dict.fromkeys([*old, *key]) if old.get(k, missing) != key.get(k, missing)]
    if diff:
        def shown(d, k):
            return repr(d[k]) if k in d else "not recorded" if d is old else "not set"

        what = "; ".join(f"{RESUME_KEYS.get(k, k)}: was {shown(old, k)}, now {shown(key, k)}" for k in diff)
        raise OutputError(
            f"{path}: --resume with other options than run {last['run_id']} would mix two results in one "
            f"file ({what}). Resume with the same options, or write to another output.")


def resolve_outputs(out: Path, scenes: list[Scene], per_scene: bool) -> dict[str, Path]:
    if per_scene:
        if out.suffix.lower() == ".gpkg":
            raise OutputError(f"{out}: with --per-scene the output is a folder (one GeoPackage per scene), "
                              "not a .gpkg file.")
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; --per-scene writes one GeoPackage per scene "
                              "into a folder.")
        if not out.parent.exists():
            raise OutputError(f"{out}: the parent folder {out.parent} does not exist; create it first.")
        targets = {s.name: out / f"{Path(s.name).stem}.gpkg" for s in scenes}
    else:
        targets = {s.name: out for s in scenes}
    check_outputs_not_inputs({"-o": set(targets.values())}, {"SCENES": [s.path for s in scenes]})
    return targets


def check_raster_output(out: Path, scene_path, overwrite: bool, option: str = "-o") -> None:
    """Refuse, before any work, an output raster that is the input, a folder, or exists (unless overwrite)."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{out}: the output directory {parent} does not exist; create it first.")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise OutputError(f"{out}: {option} must be a GeoTIFF path ending in .tif")
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; give a .tif file path.")
    check_outputs_not_inputs({option: out}, {"SCENE": scene_path})
    if out.exists():
        if not overwrite:
            raise OutputError(f"{out}: exists; add --overwrite to replace it, or choose another name.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{out}: the directory {parent} is not writable.")


# ----------------------------------------------------------------------------- the open output


def open_writers(out: Path, targets: dict[str, Path], scenes: list[Scene], output: OutputConfig,
                 layers: Sequence[str]) -> dict[Path, GeoPackageWriter]:
    """One writer per output file (the ``--per-scene`` folder made first), in the CRS of ``output.crs`` or of
    the file's first scene; those opened are closed again when one fails."""
    writers: dict[Path, GeoPackageWriter] = {}
    try:
        if output.per_scene:
            out.mkdir(exist_ok=True)
        for p in dict.fromkeys(targets.values()):
            first = next(s for s in scenes if targets[s.name] == p)
            writers[p] = GeoPackageWriter(p, output.crs or first.crs, layers=layers)
    except BaseException:
        for w in writers.values():
            w.close()
        raise
    return writers


def begin_run(writer: GeoPackageWriter, scenes: Iterable[str], state: dict, output: OutputConfig, command: str,
              record: dict, models: dict) -> None:
    """Apply the output rules to an open writer, then record the run (its first commit).

    Runs under the writer's creation lock (held until that commit), so a run of
    the same scenes that started at the same moment, and passed the read-only
    checks too, is seen here: one still writing on this host is refused, and
    without ``--resume``/``--overwrite`` so is a scene finished a moment ago.
    ``--overwrite`` deletes the scenes' rows that ``state`` (the read-only
    look) found; ``--resume`` marks runs of dead processes ``interrupted``.

    Args:
        writer: the open writer of one output file.
        scenes: names of the scenes this run writes into it.
        state: :func:`read_output_state` of the file, before it was opened.
        output: the run's output options (``resume``, ``overwrite``).
        command, record, models: what :meth:`GeoPackageWriter.start_run` records.

    Raises:
        OutputError: another process writes the same scenes, or wrote them a moment ago.
    """
    scenes = list(scenes)
    here = set(scenes)
    host = socket.gethostname()  # a 'running' row of another host cannot be checked: not a refusal
    live = [r for r in writer.live_runs() if r.get("host") == host and here & {
        sc.get("name") for sc in (r.get("config") or {}).get("scenes", []) if isinstance(sc, dict)}]
    if live:
        raise OutputError(f"{writer.path}: another geors process (pid {live[0].get('pid')}) is writing the same "
                          "scene(s) into this file right now; wait for it to finish (then --resume if needed) or "
                          "write to another output.")
    if not (output.resume or output.overwrite):
        again = sorted(n for n in here if writer.finished_tiles(n))
        if again:
            raise OutputError(f"{writer.path} already holds results for scene {again[0]} (written by a run that "
                              "finished a moment ago). Add --resume to continue it, --overwrite to replace it, or "
                              "write to another output.")
    if output.overwrite:
        for name in dict.fromkeys(scenes):
            if state["scenes"].get(name):
                writer.delete_scene_rows(name)
    if output.resume:
        writer.mark_interrupted_runs()
    writer.start_run(command, record, models)


def tiles_left(writer: GeoPackageWriter, scene: str, tiles: list[Tile], resume: bool) -> list[Tile]:
    """The tiles of ``scene`` a run writes: all of them, or with ``resume`` those the ledger does not hold
    (the grid was checked against the ledger by :func:`check_continuation`)."""
    if not resume:
        return tiles
    done = writer.finished_tiles(scene)
    return [t for t in tiles if t.id not in done]


def close_writers(writers: dict[Path, GeoPackageWriter], status: str) -> None:
    """Record every run's end (``finished``, ``cancelled``, ``failed``) and close the files."""
    for w in writers.values():
        try:
            w.finish_run(status)
        finally:
            w.close()
