"""``geors eval masks``: SAMRS mIoU_I / mIoU_P of instance masks against true outlines."""

from __future__ import annotations

import click

from geors.cli.options import handle_errors


@click.command("masks")
@click.argument("pred", type=click.Path(dir_okay=False))
@click.argument("truth", type=click.Path())
@click.option("--layer", default="instances", show_default=True,
              help="Layer of PRED (the first layer when absent).")
@click.option("--truth-layer", default=None, help="Layer of TRUTH (default: the first).")
@click.option("--scene", "scenes", multiple=True, type=click.Path(dir_okay=False),
              help="Scene(s) PRED was made from: TRUTH is restricted to their footprint (default: the scenes "
                   "recorded in PRED by geors, when they exist). Repeat for several scenes.")
@click.option("--all-truth", is_flag=True, default=False,
              help="Do not restrict TRUTH to the scene footprint.")
@click.option("--min-inside", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="A true outline counts when at least this fraction of its area lies in the footprint.")
@click.option("--min-iou", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="A prediction matches a truth outline only with IoU above this.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Also write the JSON here.")
@handle_errors
def command(pred, truth, layer, truth_layer, scenes, all_truth, min_inside, min_iou, output):
    """mIoU_I (mean per instance) and mIoU_P (pooled pixels) of PRED masks against TRUTH outlines.

    Instances are matched one-to-one by highest IoU; a missed truth instance
    counts as IoU 0. TRUTH may be in any CRS (reprojected to PRED's) and cover
    a larger region than the scene: outlines outside the scene footprint are
    left out (``n_truth_outside``).
    """
    from geors.cli.eval import emit_json
    from geors.paths import check_outputs_not_inputs

    check_outputs_not_inputs({"-o": output}, {"PRED": pred, "TRUTH": truth, "--scene": scenes})
    from geors.evaluate.masks import evaluate_mask_files

    emit_json(evaluate_mask_files(pred, truth, pred_layer=layer, truth_layer=truth_layer, min_iou=min_iou,
                                  scenes=list(scenes) or None, restrict=not all_truth, min_inside=min_inside),
              output)
