"""The message catalogue of the troubleshooting page, built from ``messages.collect()``.

Run alone to print it: ``python docs/gen/messages_page.py``.
"""

from __future__ import annotations

from collections import defaultdict

import messages

# What each kind of message means for the person who sees it, and what to do in general. The
# message itself names the file or option and the fix; this is the background. tests/test_docs.py
# checks that every kind found in the code has an entry here.
ADVICE: dict[str, tuple[str, str]] = {
    "ConfigError": ("exit 2", "An option, a value in a `--config` TOML file or a `PipelineConfig` field is "
                    "invalid or conflicts with another. Nothing was written. Fix the option named in the "
                    "message; `geors COMMAND --help` lists the allowed values."),
    "SceneReadError": ("exit 2 (or: scene skipped, exit 1 at the end)", "A scene cannot be opened or read: "
                       "missing, not a raster, truncated, or unreadable by GDAL. With several scenes the bad "
                       "one is reported and skipped (exit 1 at the end, the rest is written) unless `--strict`. "
                       "Check the file with `gdalinfo` or `geors info SCENE`."),
    "GeoreferenceError": ("exit 2", "The scene has no usable georeferencing (no CRS, GCPs only, a rotated "
                          "grid). Georeference it in QGIS (Raster > Georeferencer) or warp it with "
                          "`gdalwarp -t_srs EPSG:XXXX in.tif out.tif`; training also accepts "
                          "`--allow-ungeoreferenced` with pixel labels."),
    "BandError": ("exit 2", "A band index does not exist in the scene, or the number of bands does not fit "
                  "the model. Pick the bands with `--bands 4,3,2` (1-based); `geors info SCENE` lists them."),
    "OutputError": ("exit 2", "The output cannot be written or does not fit this run: its folder is "
                    "missing, the file exists and is something else, the scene is already in it (use "
                    "`--resume` or `--overwrite`), or `--resume` was asked with other options. An existing "
                    "GeoPackage is never damaged."),
    "LabelError": ("exit 2", "Labels (training boxes or polygons, box prompts, ground truth) are empty, "
                   "unreadable, in an unknown CRS, outside the scene or without the class field. Open the "
                   "file in QGIS next to the scene: both should overlap; `--class-field` names the attribute."),
    "ModelError": ("exit 2", "A model file or SAM checkpoint is missing, corrupt, foreign, or does not fit "
                   "the scene (bands, classes). `geors models list` shows what is installed; "
                   "`geors models download sam-vit_b` fetches a checkpoint."),
    "DependencyNotFoundError": ("exit 2", "An optional Python package is missing. The message names the "
                                "package and the `pip install` line that installs it (`pip install segment-anything`)."),
    "DownloadError": ("exit 2", "A download failed (offline, blocked or a checksum mismatch). Retry, or "
                      "download the file elsewhere and put it where the message says."),
    "GateCalibrationError": ("exit 2", "Training could not find a gate threshold that passes the share of "
                             "validation tiles with objects asked by `--gate-recall`. Label more tiles, "
                             "lower `--gate-recall`, or train with `--val-fraction 0` (gate disabled)."),
    "ProcessingError": ("exit 1", "Processing failed for a reason that is not your input. Read the log "
                        "(`geors -v ...`) and the `message` field of `geors_tiles`; `--resume` retries."),
    "Cancelled": ("exit 130", "The run was cancelled (Ctrl-C, SIGTERM, QGIS Cancel). Every committed batch "
                  "is in the output; the command printed after it (the same with `--resume`) continues."),
    "BadParameter": ("exit 2", "click rejected an option's format before geors ran; the message shows the "
                     "expected form."),
    "CLI": ("exit 1 or 130", "Printed by a command itself at the end of a run (failed tiles, skipped scenes) "
            "or when it is stopped (Ctrl-C, SIGTERM). The output is valid; the command it prints continues "
            "the run with `--resume`."),
    "WARNING": ("no exit", "Printed to stderr as `WARNING geors.MODULE: ...`; the run goes on. Read it: "
                "it says what geors did instead (dropped labels, reprojected features, a disabled gate)."),
    "ERROR": ("no exit", "Printed to stderr as `ERROR geors.MODULE: ...`; the run goes on without the item "
              "named."),
    "ValueError": ("Python API", "A check of the Python API's arguments (a programming error in the calling "
                   "script, or a bug in geors if you see it from the `geors` command). Raised as a "
                   "traceback, exit 1."),
    "TypeError": ("Python API", "As ValueError: a wrong argument type in a call from Python."),
    "IndexError": ("Python API", "An index outside a `TileGrid` (Python)."),
    "AttributeError": ("Python API", "`geors.NAME` that the package does not export (Python)."),
}

ORDER = list(ADVICE)


def _code(text: str) -> str:
    text = " ".join(text.split())
    if "`" in text:
        return "`` " + text + " ``"
    return "`" + text + "`"


def grouped() -> dict[str, list[messages.Message]]:
    groups: dict[str, list[messages.Message]] = defaultdict(list)
    for m in messages.collect():
        groups[m.kind].append(m)
    return groups


def markdown() -> str:
    groups = grouped()
    classes = messages.exception_classes()
    kinds = sorted(groups, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))
    total = sum(len(v) for v in groups.values())
    out = [f"{total} messages in {len(kinds)} kinds, read from the source code of this version.\n"]
    for kind in kinds:
        exit_code, advice = ADVICE.get(kind, ("?", "(no advice written yet)"))
        doc = classes.get(kind, (None, ""))[1]
        out.append(f"### {kind} ({len(groups[kind])}) {{#{kind.lower()}}}\n")
        out.append(f"**{exit_code}**. {doc + ' ' if doc else ''}{advice}\n")
        places: dict[str, list[str]] = {}  # one entry per text, with every place that raises it
        for m in sorted(groups[kind], key=lambda m: (m.module, m.line)):
            places.setdefault(" ".join(m.text.split()), []).append(
                f"{m.module}.{m.function}" if m.function else m.module)
        for text, where in places.items():
            out.append(f"- {_code(text)}  \n  <small>{', '.join(dict.fromkeys(where))}</small>")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
