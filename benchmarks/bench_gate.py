"""Gating benchmark: detection time and recall with and without the R2-CNN tile gate.

Runs the real pipeline (``geors.pipeline.process_scenes`` with
``geors.stages.DetectStage``, i.e. what ``geors detect`` runs) twice over a
sparse scene made by ``make_sparse_scene.py``: once with the gate (the
detector branch runs only on tiles whose gate probability passes) and once
with ``--no-gate`` (detector on every tile). Each run writes a GeoPackage,
which is then scored against the truth layer with
``geors.evaluate.evaluate_detection_files`` (what ``geors eval detections``
runs). Both runs use the same scheduler, batch size and device. The timed
region is the whole ``process_scenes`` call (tile reads, gate, detector,
ownership, GeoPackage writes); model weights are loaded before it, and
``--warmup`` does one untimed run first.

Goals from issue 3: time(gate) / time(no gate) <= 0.3, recall loss <= 1 point.

Usage::

    python benchmarks/make_sparse_scene.py -o /tmp/geors_bench/sparse.tif
    python benchmarks/bench_gate.py /tmp/geors_bench/sparse.tif [--model NAME|PATH] [--device cpu]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import emit, parser, set_threads  # noqa: E402


def run_once(scene_path: Path, out: Path, model: str | None, device: str, use_gate: bool,
             gate_threshold: float | None, score_threshold: float, batch_size: int, workers: int) -> dict:
    """One pipeline run; returns wall seconds, tile counts and the stage's description."""
    from geors.config import DetectConfig, ExecutionConfig, PipelineConfig
    from geors.pipeline import process_scenes
    from geors.stages import DetectStage

    detect = DetectConfig(model=model, gate_threshold=gate_threshold if use_gate else None,
                          score_threshold=score_threshold, use_gate=use_gate)
    stage = DetectStage(detect, device=device)
    stage.detector  # load the weights outside the timed region  # noqa: B018
    config = PipelineConfig(detect=detect, execution=ExecutionConfig(
        device=device, batch_size=batch_size, workers=workers, scheduler="synchronous" if workers <= 1 else None))
    t0 = time.perf_counter()
    summary = process_scenes([str(scene_path)], out, stage, config, command="bench_gate")
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "tiles": summary.tiles, "gated": summary.gated,
            "detector_tiles": summary.processed - summary.gated, "detections": summary.detections,
            "gate_threshold": stage.gate_threshold, "model": stage.describe().get("model")}


def model_breakdown(scene_path: Path, model: str | None, device: str, batch_size: int, repeats: int = 2) -> dict:
    """Milliseconds per tile of the model alone: backbone + gate, and backbone + gate + detector on all tiles.

    Their ratio is the floor of the gated/ungated time ratio (no tile passing
    the gate). With ``gate_input_scale == 1`` (paper) the gate shares the
    full-resolution backbone, so only the detector branch is saved; with the
    cheap gate (scale s > 1) the gate pass runs the backbone on tiles pooled by s.
    """
    import numpy as np

    from geors.detect import Detector
    from geors.raster import open_scene
    from geors.tiling import TileGrid

    det = Detector.load(model, device=device)
    scene = open_scene(scene_path)
    grid = TileGrid(scene, det.tile_size, det.overlap)
    x = np.stack([scene.read_tile(t).image for t in list(grid)[:batch_size]])
    det.gate_and_detect(x, gate_threshold=None)  # warm-up

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            if det.device.type == "cuda":
                import torch

                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if det.device.type == "cuda":
                import torch

                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return 1000 * best / len(x)

    gate_ms = timed(lambda: det.gate(x))
    full_ms = timed(lambda: det.gate_and_detect(x, gate_threshold=None))
    return {"tiles": len(x), "device": str(det.device),
            "gate_input_scale": int(getattr(det.model.config, "gate_input_scale", 1)), "gate_ms_per_tile": round(gate_ms, 1),
            "gate_plus_detector_ms_per_tile": round(full_ms, 1),
            "gate_tiles_per_s": round(1000 / gate_ms, 2), "detector_tiles_per_s": round(1000 / full_ms, 2),
            "ratio_floor": round(gate_ms / full_ms, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, device="auto")
    ap.add_argument("scene", type=Path, help="sparse scene from make_sparse_scene.py")
    ap.add_argument("--truth", type=Path, default=None, help="truth layer (default: SCENE_truth.gpkg)")
    ap.add_argument("--model", default=None, help="model name or file (default: geors' default model)")
    ap.add_argument("--gate-threshold", type=float, default=None, help="default: the model's")
    ap.add_argument("--score-threshold", type=float, default=0.3, help="detector score kept (both runs)")
    ap.add_argument("--eval-score-threshold", type=float, default=0.5,
                    help="score at which recall/precision are reported")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1, help="1 = synchronous (cleanest timing)")
    ap.add_argument("--warmup", action="store_true", help="run once with the gate before timing (caches, JIT)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-tile model timing")
    ap.add_argument("--outdir", type=Path, default=None, help="keep the GeoPackages here")
    ap.add_argument("-o", "--output", type=Path, default=None, help="also write the whole JSON report here")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    from geors.evaluate import evaluate_detection_files

    truth = args.truth or args.scene.with_name(args.scene.stem + "_truth.gpkg")
    for p in (args.scene, truth):
        if not p.exists():
            print(f"{p}: not found; make it with benchmarks/make_sparse_scene.py", file=sys.stderr)
            return 2
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="geors_bench_gate_"))
    outdir.mkdir(parents=True, exist_ok=True)
    # Both runs must use the same weights even if the default model is replaced meanwhile: copy it once.
    import shutil

    from geors.models.registry import file_sha256, get_model

    model_copy = outdir / "model.safetensors"
    shutil.copyfile(get_model(args.model), model_copy)
    common = dict(model=str(model_copy), device=args.device, gate_threshold=args.gate_threshold,
                  score_threshold=args.score_threshold, batch_size=args.batch_size, workers=args.workers)
    if args.warmup:
        run_once(args.scene, outdir / "warmup.gpkg", use_gate=True, **common)
    report: dict = {"scene": str(args.scene), "truth": str(truth), "device": args.device,
                    "model": args.model or "default", "model_sha256": file_sha256(model_copy)}
    if not args.no_breakdown:
        report["model_only"] = model_breakdown(args.scene, str(model_copy), args.device, args.batch_size)
    for key, use_gate in (("no_gate", False), ("gate", True)):
        out = outdir / f"{key}.gpkg"
        if out.exists():
            out.unlink()
        run = run_once(args.scene, out, use_gate=use_gate, **common)
        metrics = evaluate_detection_files(out, truth, scene=args.scene, class_agnostic=True,
                                           score_threshold=args.eval_score_threshold)
        run.update({
            "AP50": metrics["overall"]["AP50"], "AP": metrics["overall"]["AP"],
            "recall": metrics["overall"]["recall"], "precision": metrics["overall"]["precision"],
            "n_truth": metrics["overall"]["n_truth"], "output": str(out),
        })
        if "gate" in metrics:
            run["gate_metrics"] = metrics["gate"]
        report[key] = run
    g, n = report["gate"], report["no_gate"]
    report["time_ratio"] = round(g["seconds"] / n["seconds"], 3) if n["seconds"] else None
    if g["recall"] is not None and n["recall"] is not None:
        report["recall_loss_points"] = round(100 * (n["recall"] - g["recall"]), 2)
    report["goals"] = {"time_ratio_max": 0.3, "recall_loss_points_max": 1.0}
    text = json.dumps(report, indent=2, default=str)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    emit([{"run": k, "seconds": report[k]["seconds"], "recall": report[k]["recall"], "AP50": report[k]["AP50"],
           "precision": report[k]["precision"]} for k in ("no_gate", "gate")], args,
         extra={k: report[k] for k in ("time_ratio", "recall_loss_points", "goals") if k in report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
