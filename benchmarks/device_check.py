"""One prepared device check: four figures on the accelerator, each beside the same figure on the CPU.

Made to run unattended in the first minutes of a lent GPU (total time guarded by ``--budget``):

    python benchmarks/device_check.py --out $OUT/device.json             # cuda (if present) and cpu
    python benchmarks/device_check.py --device cpu --quick --threads 1   # a smoke run on a laptop

It needs the geors environment (``pip install -e .`` with torch; ``segment-anything`` for the SAM
figure, whose absence is reported as that figure's error). Figures (weights are random or built-in;
nothing is downloaded):

- ``gate+detect``: megapixels per second through ``Detector.gate_and_detect`` of the built-in tree
  model on 640 px tiles read (``Scene.read_tile``) from a generated scene of bright crowns on
  dark ground, every tile through the detector (``gate_threshold=None``: what a dense scene costs);
- ``sam vit_b encoder``: images per second of SAM ViT-B's image encoder (1024 px input, random
  weights from ``segment_anything.sam_model_registry["vit_b"](checkpoint=None)``; ``--quick``
  uses a tiny SAM at 256 px instead);
- ``c2fnet wide``: megapixels per second of ``C2FNet`` (``variant="wide"``, coarse + fine + Eq. 1,
  random weights, 4 classes, one small) on 640 px tiles;
- ``train step``: detector training steps per second (R2-CNN with the built-in model's
  architecture, AdamW, crops of 256 px, batch 4; bf16/fp16 autocast on CUDA as ``geors train``).

Each figure is measured on ``--device`` (default: cuda when torch sees one) and then on the CPU
with fewer calls (``--cpu-seconds``): every figure on the device first, then the CPU ones. The JSON (``--out``) is rewritten after every figure, so a
run stopped by the guard or by a kill keeps what it measured; a figure that fails or does not fit
the time left is reported with its reason. A rate is that of the median call (``harness.rate``; a
single warm-up call that takes the whole time slice is the measurement). ``--budget`` ends a figure at
the next Python call; a process still running ``HARD_STOP_S`` later is ended (exit 124).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

FIGURES = ("gate+detect", "sam vit_b encoder", "c2fnet wide", "train step")
HARD_STOP_S = 20.0  # seconds past --budget before the process is ended from a timer thread


class OutOfTime(Exception):
    pass


def _sizes(quick: bool, cuda: bool) -> dict:
    """Work per call: small on the CPU, several tiles per call on a GPU; tiny with ``--quick``."""
    if quick:
        return dict(scene=768, tiles=2, tile=None, sam="tiny", sam_batch=1, seg_tile=256, seg_batch=1,
                    crop=128, train_batch=2)
    return dict(scene=2048, tiles=8 if cuda else 2, tile=None, sam="vit_b", sam_batch=4 if cuda else 1,
                seg_tile=640, seg_batch=8 if cuda else 1, crop=256, train_batch=4)


def gate_detect(device: str, sz: dict, work: Path, seconds: float) -> dict:
    import numpy as np

    from geors.detect import Detector
    from geors.raster import open_scene
    from geors.tiling import TileGrid

    det = Detector.load(None, device=device)
    scene = open_scene(harness.make_object_scene(work / f"device_check_{sz['scene']}.tif", sz["scene"]))
    tiles = list(TileGrid(scene, det.tile_size, det.overlap))[: sz["tiles"]]
    x = np.stack([scene.read_tile(t).image for t in tiles])
    mp = x.shape[0] * x.shape[2] * x.shape[3] / 1e6
    n_boxes = sum(len(d[0]) for d in det.gate_and_detect(x, gate_threshold=None)[1])
    r = harness.rate(lambda: det.gate_and_detect(x, gate_threshold=None), mp, det.device, max_seconds=seconds)
    return dict(r, unit="MP/s", work=f"{x.shape[0]} tiles of {x.shape[2]} px per call, {n_boxes} boxes",
                precision=det.precision)


TINY_SAM = dict(name="tiny", img_size=256, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                encoder_global_attn_indexes=[1], window_size=8, prompt_embed_dim=32, decoder_mlp_dim=64,
                decoder_num_heads=2, iou_head_hidden_dim=32)


def sam_encoder(device: str, sz: dict, work: Path, seconds: float) -> dict:
    import torch

    torch.manual_seed(0)
    if sz["sam"] == "tiny":
        from geors.sam_weights import build_sam_from_config

        sam, size = build_sam_from_config(TINY_SAM), 256
    else:
        from segment_anything import sam_model_registry

        sam, size = sam_model_registry["vit_b"](checkpoint=None), 1024
    enc = sam.image_encoder.to(device).eval()
    x = torch.rand(sz["sam_batch"], 3, size, size, device=device)

    def call():
        with torch.inference_mode():
            enc(x)

    r = harness.rate(call, x.shape[0], device, max_seconds=seconds)
    return dict(r, unit="images/s", work=f"{x.shape[0]} x {size} px, {sz['sam']} (random weights), fp32")


def c2fnet_wide(device: str, sz: dict, work: Path, seconds: float) -> dict:
    import torch

    from geors.models.c2fnet import C2FNet, C2FNetConfig

    torch.manual_seed(0)
    model = C2FNet(C2FNetConfig(variant="wide", num_classes=4, small_classes=(3,))).to(device).eval()
    side = sz["seg_tile"]
    x = torch.rand(sz["seg_batch"], 3, side, side, device=device)

    def call():
        with torch.inference_mode():
            model(x)

    r = harness.rate(call, x.shape[0] * side * side / 1e6, device, max_seconds=seconds)
    return dict(r, unit="MP/s", work=f"{x.shape[0]} tiles of {side} px per call (coarse + fine + Eq. 1), fp32")


def train_step(device: str, sz: dict, work: Path, seconds: float) -> dict:
    import torch

    from geors.detect import Detector
    from geors.models.r2cnn import R2CNN, R2CNNConfig

    torch.manual_seed(0)
    arch = Detector.load(None, device="cpu").model.config.to_dict()
    model = R2CNN(R2CNNConfig.from_dict(arch)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    b, crop = sz["train_batch"], sz["crop"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, crop, crop, generator=g).to(device)
    targets = []
    for _ in range(b):
        xy = torch.rand(6, 2, generator=g) * (crop - 40)
        wh = 12 + torch.rand(6, 2, generator=g) * 24
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.zeros(6, dtype=torch.int64, device=device)})
    cuda = str(device).startswith("cuda")
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and dtype == torch.float16)

    def step():
        with torch.autocast(device_type="cuda", dtype=dtype, enabled=cuda):
            losses = model.compute_losses(x, targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(opt)
        scaler.update()

    r = harness.rate(step, 1, device, max_seconds=seconds)
    return dict(r, unit="steps/s", work=f"batch {b} crops of {crop} px, 6 boxes each, "
                                        f"{'autocast ' + str(dtype).split('.')[-1] if cuda else 'fp32'}")


MEASURE = {"gate+detect": gate_detect, "sam vit_b encoder": sam_encoder, "c2fnet wide": c2fnet_wide,
           "train step": train_step}


def environment(device: str, threads: int) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "threads_option": threads, "machine": platform.machine(),
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser(__doc__, with_dir=True, device="auto", threads=0)
    ap.add_argument("--out", type=Path, default=None, help="the JSON report (rewritten after every figure)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run: seconds on a CPU)")
    ap.add_argument("--budget", type=float, default=270.0,
                    help="seconds for the whole check (default %(default)s); figures that do not fit are skipped")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per figure on the device")
    ap.add_argument("--cpu-seconds", type=float, default=10.0, help="timed seconds per figure on the CPU")
    ap.add_argument("--figures", default=",".join(FIGURES), help="comma-separated subset of: " + ", ".join(FIGURES))
    a = ap.parse_args(argv)
    start = time.monotonic()
    out = a.out or a.json
    figures = [f.strip() for f in a.figures.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        ap.error(f"--figures: unknown {unknown}; choose from {', '.join(FIGURES)}")

    def on_alarm(signum, frame):
        raise OutOfTime(f"the --budget of {a.budget:.0f} s ran out")

    if hasattr(signal, "SIGALRM"):  # stops the figure running when the budget ends (between Python calls)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(a.budget) + 1)

    def hard_stop():  # one long C++ call (a CPU ViT-B forward) does not see the alarm: end the process
        print(f"device check: hard stop {a.budget + HARD_STOP_S:.0f} s after the start; the JSON keeps the "
              "figures measured", file=sys.stderr, flush=True)
        os._exit(124)

    stopper = threading.Timer(a.budget + HARD_STOP_S, hard_stop)
    stopper.daemon = True
    stopper.start()
    report: dict = {"environment": None, "quick": a.quick, "budget_s": a.budget, "rows": []}

    def save():
        report["total_s"] = round(time.monotonic() - start, 1)
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(report, indent=1) + "\n")

    results: dict[tuple[str, str], dict] = {}
    try:
        _measure_all(a, figures, start, report, results, save)
    except OutOfTime as exc:  # outside a figure (imports on a loaded machine)
        report["stopped"] = str(exc)
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
        stopper.cancel()
        save()
    print(f"device check: {report['environment']}, {report['total_s']} s" + (
        f", stopped: {report['stopped']}" if "stopped" in report else ""))
    harness.emit(report["rows"], a)
    measured = [r for r in results.values() if "per_s" in r]
    return 0 if measured else 1


def _measure_all(a, figures: list[str], start: float, report: dict, results: dict, save) -> None:
    """Every figure on the device, then on the CPU; ``report["rows"]`` and the JSON updated after each."""
    harness.set_threads(a.threads)
    import torch

    from geors.device import resolve_device

    device = str(resolve_device(a.device))
    devices = [device] + (["cpu"] if device != "cpu" else [])
    report["environment"] = environment(device, a.threads)
    save()
    for dev in devices:  # every figure on the device first: the lent minutes are for those
        for name in figures:
            left = a.budget - (time.monotonic() - start)
            seconds = a.seconds if dev != "cpu" or device == "cpu" else a.cpu_seconds
            if left < 5:
                res = {"skipped": f"budget: {left:.0f} s left"}
            else:
                sz = _sizes(a.quick, dev.startswith("cuda"))
                try:
                    res = MEASURE[name](dev, sz, a.dir, min(seconds, max(1.0, left / 3)))
                except OutOfTime as exc:
                    res = {"skipped": str(exc)}
                except Exception as exc:  # one figure failing must not cost the others
                    res = {"error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc(limit=3)}
                finally:
                    if dev.startswith("cuda"):
                        torch.cuda.empty_cache()
            results[(name, dev)] = res
            print(f"# {name} on {dev}: {json.dumps(res)}", file=sys.stderr, flush=True)
            report["rows"] = _rows(figures, devices, results)
            save()


def _rows(figures, devices, results) -> list[dict]:
    rows = []
    for name in figures:
        row = {"figure": name}
        for dev in devices:
            r = results.get((name, dev))
            if r is None:
                continue
            row["unit"] = r.get("unit", row.get("unit"))
            row[dev] = round(r["per_s"], 3) if "per_s" in r else ("error: " + r["error"] if "error" in r
                                                                   else "skipped: " + r["skipped"])
            row[f"{dev} work"] = r.get("work")
        if len(devices) == 2 and all(isinstance(row.get(d), float) for d in devices):
            row["speed-up"] = round(row[devices[0]] / row[devices[1]], 1)
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
