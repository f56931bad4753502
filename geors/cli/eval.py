"""``geors eval``: metrics of geors outputs against ground truth, as JSON.

The group is meant to grow: a module adds a subcommand with
``eval_group.add_command(command)`` (see ``_register`` in ``geors.cli.main``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from geors.cli.options import handle_errors
from geors.config import DEFAULT_SCORE_THRESHOLD
from geors.errors import OutputError


@click.group("eval")
def eval_group() -> None:
    """Compare outputs with ground truth; print metrics as JSON."""


#: What ``geors.cli.main`` registers.
command = eval_group


def emit_json(result: dict, output: str | None) -> None:
    """Print ``result`` as JSON on stdout and, when ``output`` is given, write it there too."""
    text = json.dumps(result, indent=2, default=str)
    if output:
        try:
            Path(output).write_text(text + "\n")
        except OSError as exc:
            raise OutputError(f"{output}: cannot write the metrics ({exc.strerror}); check the directory.") from None
    click.echo(text)


@eval_group.command("detections")
@click.argument("pred", type=click.Path(dir_okay=False))
@click.argument("truth", type=click.Path())
@click.option("--scene", type=click.Path(dir_okay=False), default=None,
              help="Scene the truth belongs to: needed for VOC XML/CSV truth (pixel coordinates); "
                   "restricts PRED to this scene and adds gate metrics from the tile ledger.")
@click.option("--class-field", default=None,
              help="Class field of TRUTH (default: 'class' or 'label' when present).")
@click.option("--class-agnostic", is_flag=True, default=False,
              help="Ignore classes (default when TRUTH has no class field).")
@click.option("--layer", default="detections", show_default=True, help="Detections layer in PRED.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Detections scoring at least this count for recall, precision and F1 [default: the threshold "
                   "PRED was written with (its run record: the model's, calibrated for the best F1), else "
                   f"{DEFAULT_SCORE_THRESHOLD}]. AP and max_recall use every written score: write PRED with "
                   "`geors detect --min-score 0.05` so they are not capped by the threshold.")
@click.option("--iou", "match_iou", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="IoU needed for a match in recall and precision.")
@click.option("--gate-threshold", type=click.FloatRange(0, 1), default=None,
              help="Gate threshold for gate metrics (default: the ledger's gated/not gated status).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@handle_errors
def detections_command(pred, truth, scene, class_field, class_agnostic, layer, score_threshold, match_iou,
                       gate_threshold, output):
    """AP50, COCO AP (IoU 0.50:0.95), recall, precision and F1 per class for PRED against TRUTH.

    PRED is a GeoPackage from `geors detect`/`geors run`. TRUTH is any vector
    file of boxes or polygons (any CRS; reprojected to PRED's), or Pascal VOC
    XML / CSV in pixel coordinates of --scene.
    """
    from geors.evaluate import evaluate_detection_files
    from geors.paths import check_outputs_not_inputs

    check_outputs_not_inputs({"-o": output}, {"PRED": pred, "TRUTH": truth, "--scene": scene})

    result = evaluate_detection_files(
        pred, truth, scene=scene, layer=layer, truth_class_field=class_field,
        class_agnostic=class_agnostic or None, gate_threshold=gate_threshold,
        score_threshold=score_threshold, match_iou=match_iou,
    )
    emit_json(result, output)
