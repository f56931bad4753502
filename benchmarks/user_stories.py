"""User stories: train, predict and evaluate with the CLI's DEFAULTS on every labelled scene we have.

What a new user does with their own labels, with nothing but the documented commands and their
defaults: ``geors train detector|segmenter --scene S --labels L --class-field class -o M``, then
``geors detect|segment|masks`` on a part of the scene the model never saw, then ``geors eval``.
Each labelled scene is split in space (a part to train on, a part to test on; a box belongs to the part
holding its centre and is clipped to it), written as a GeoTIFF in a projected CRS with GeoPackage
labels, as an analyst would draw them in QGIS. One table: AP50 / F1 of the written layer (detector),
IoU of the small classes (segmenter), mIoU_I of the no-SAM outlines against the plain box (masks), and
the minutes each training took.

Stories (all need ``geors sample neon``; the vehicle stories need ``../shared/data/dota-P1888`` and are
skipped without it):

- ``trees-one-scene``: NEON OSBS_029 (61 crowns), top 60 % trains, bottom 40 % tests: the small-scene case.
- ``trees-two-images``: NEON YELL crop2 (574 crowns) trains, YELL crop (279 crowns) tests.
- ``vehicles``: DOTA P1888 (64 vehicles, 2 classes), top 55 % trains, bottom 45 % tests.
- ``vehicles-seg``: the same split, polygons -> ``geors train segmenter``, IoU of the vehicle classes.
- ``vehicles-masks``: the test part's vehicle envelopes -> ``geors masks`` (default engine, no SAM) vs ``--sam box``.

The OSBS_029 images were used to choose earlier default models, so none of these parts is "held out" from
the project; they are held out from the model each story trains.

Run: ``python benchmarks/user_stories.py [--stories a,b] [--max-minutes M] [--jobs 2]``. Without
``--max-minutes`` the trainers run with their own default budget; each command runs with one thread
(``OMP_NUM_THREADS=1``). ``--geors "python -m geors"`` picks the interpreter/checkout to measure (e.g. an
older commit: ``--geors "env PYTHONPATH=/tmp/old python -m geors"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

NEON = Path(os.environ.get("GEORS_CACHE_DIR", Path.home() / ".cache" / "geors")) / "samples" / "neon"
DOTA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dota-P1888"
STORIES = ("trees-one-scene", "trees-two-images", "vehicles", "vehicles-seg", "vehicles-masks")


# ---------------------------------------------------------------- data: scenes and labels as a user has them
def _read_voc(path: Path) -> list[tuple[list[tuple[float, float]], str]]:
    objs = []
    for o in ET.parse(path).getroot().iter("object"):
        b = o.find("bndbox")
        x0, y0, x1, y1 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        objs.append(([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], "tree"))
    return objs


def _read_dota(path: Path) -> tuple[list[tuple[list[tuple[float, float]], str]], float]:
    objs, gsd = [], 0.25
    for line in path.read_text().splitlines():
        parts = line.split()
        if line.startswith("gsd:"):
            gsd = float(line.split(":", 1)[1])
        elif len(parts) >= 9:
            xy = [float(v) for v in parts[:8]]
            objs.append(([(xy[i], xy[i + 1]) for i in range(0, 8, 2)], parts[8]))
    return objs, gsd


def _image(path: Path) -> np.ndarray:
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the PNGs have no georeference: that is what this script adds
        with rasterio.open(path) as ds:
            return ds.read()[:3]


def _write_part(out: Path, image: np.ndarray, objs, window: tuple[int, int, int, int], crs: str,
                origin: tuple[float, float], gsd: float) -> int:
    """Write image[window] as ``out.tif`` and the objects centred in it (clipped) as ``out.gpkg``.

    Returns the number of objects written.
    """
    import geopandas as gpd
    import rasterio
    import shapely
    from affine import Affine

    c0, r0, w, h = window
    transform = Affine(gsd, 0, origin[0] + c0 * gsd, 0, -gsd, origin[1] - r0 * gsd)
    with rasterio.open(out.with_suffix(".tif"), "w", driver="GTiff", width=w, height=h, count=image.shape[0],
                       dtype=image.dtype, crs=crs, transform=transform) as ds:
        ds.write(image[:, r0:r0 + h, c0:c0 + w])
    frame = shapely.box(c0, r0, c0 + w, r0 + h)
    geoms, classes = [], []
    for pts, cls in objs:
        poly = shapely.Polygon(pts)
        c = poly.centroid
        if not frame.contains(c):
            continue
        clipped = poly.intersection(frame)
        if clipped.is_empty or clipped.area < 4:
            continue
        world = shapely.transform(clipped, lambda a: np.c_[origin[0] + a[:, 0] * gsd, origin[1] - a[:, 1] * gsd])
        geoms.append(world)
        classes.append(cls)
    gpd.GeoDataFrame({"class": classes}, geometry=geoms, crs=crs).to_file(out.with_suffix(".gpkg"), driver="GPKG")
    return len(geoms)


def prepare(work: Path) -> dict[str, dict]:
    """Write every story's train/test GeoTIFFs and GeoPackages under ``work``; returns what exists."""
    data: dict[str, dict] = {}
    work.mkdir(parents=True, exist_ok=True)
    if not (NEON / "OSBS_029.xml").exists():
        subprocess.run(["geors", "sample", "neon"], check=True)
    osbs = _image(NEON / "OSBS_029.tif")
    objs = _read_voc(NEON / "OSBS_029.xml")
    h, w = osbs.shape[1:]
    cut = int(round(h * 0.6))
    d = work / "trees-one-scene"
    d.mkdir(exist_ok=True)
    n_train = _write_part(d / "train", osbs, objs, (0, 0, w, cut), "EPSG:32617", (404000.0, 3285000.0), 0.1)
    n_test = _write_part(d / "test", osbs, objs, (0, cut, w, h - cut), "EPSG:32617", (404000.0, 3285000.0), 0.1)
    data["trees-one-scene"] = {"dir": d, "n_train": n_train, "n_test": n_test}

    d = work / "trees-two-images"
    d.mkdir(exist_ok=True)
    a = NEON / "2019_YELL_2_528000_4978000_image_crop2"
    b = NEON / "2019_YELL_2_541000_4977000_image_crop"
    ia, ib = _image(a.with_suffix(".png")), _image(b.with_suffix(".png"))
    n_train = _write_part(d / "train", ia, _read_voc(a.with_suffix(".xml")), (0, 0, ia.shape[2], ia.shape[1]),
                          "EPSG:32612", (528000.0, 4978000.0), 0.1)
    n_test = _write_part(d / "test", ib, _read_voc(b.with_suffix(".xml")), (0, 0, ib.shape[2], ib.shape[1]),
                         "EPSG:32612", (541000.0, 4977000.0), 0.1)
    data["trees-two-images"] = {"dir": d, "n_train": n_train, "n_test": n_test}

    if (DOTA / "P1888.png").exists():
        img = _image(DOTA / "P1888.png")
        objs, gsd = _read_dota(DOTA / "P1888.txt")
        h, w = img.shape[1:]
        # top 55 % / bottom 45 %: both parts hold both classes (the small vehicles all lie right of x = 600)
        cut = int(round(h * 0.55))
        d = work / "vehicles"
        d.mkdir(exist_ok=True)
        n_train = _write_part(d / "train", img, objs, (0, 0, w, cut), "EPSG:32633", (500000.0, 5000000.0), gsd)
        n_test = _write_part(d / "test", img, objs, (0, cut, w, h - cut), "EPSG:32633", (500000.0, 5000000.0), gsd)
        for s in ("vehicles", "vehicles-seg", "vehicles-masks"):
            data[s] = {"dir": d, "n_train": n_train, "n_test": n_test}
    return data


# ---------------------------------------------------------------- running the CLI as a user would
def _run(geors: list[str], args: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ geors " + shlex.join(args) + "\n")
        f.flush()
        # cwd: the story's folder, so `python -m geors` imports the checkout --geors names, not the current folder's
        rc = subprocess.run([*geors, *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=log.parent).returncode
    if rc != 0:
        raise RuntimeError(f"geors {shlex.join(args)} exited {rc}: see {log}")
    return time.perf_counter() - t0


EVAL = [sys.executable, "-m", "geors"]  # metrics always from this checkout, whatever --geors trains and predicts with
REUSE = False  # --reuse: keep a story's model and outputs from an earlier run with the same --tag


def _make(geors: list[str], args: list[str], log: Path, product: Path) -> float:
    """Run a command that writes ``product`` (unless --reuse and it exists); seconds taken (0 when reused)."""
    if REUSE and product.exists():
        return 0.0
    product.unlink(missing_ok=True)
    return _run(geors, args, log)


def _eval(args: list[str], log: Path, name: str) -> dict:
    out = log.with_name(f"{log.stem}.{name}.json")
    _run(EVAL, [*args, "-o", str(out)], log)
    return json.loads(out.read_text())


def _f1(r, p) -> float | None:
    if r == 0:
        return 0.0  # nothing found (also when nothing was written: precision undefined)
    if r is None or p is None:
        return None
    return 0.0 if r + p == 0 else 2 * r * p / (r + p)


def detector_story(name: str, d: Path, geors: list[str], budget: list[str], tag: str, extra: list[str]) -> dict:
    log = d / f"{tag}.{name}.log"
    model, out = d / f"{tag}.det.safetensors", d / f"{tag}.det.gpkg"
    secs = _make(geors, ["train", "detector", "--scene", str(d / "train.tif"), "--labels", str(d / "train.gpkg"),
                         "--class-field", "class", *extra, *budget, "-o", str(model)], log, model)
    _make(geors, ["detect", str(d / "test.tif"), "--model", str(model), "-o", str(out)], log, out)
    # written = exactly what the user got; all = every score in the file (AP is not capped by a threshold)
    written = _eval(["eval", "detections", str(out), str(d / "test.gpkg"), "--class-field", "class",
                            "--class-agnostic", "--score-threshold", "0"], log, "eval")["overall"]
    return {"story": name, "kind": "detector", "AP50": written["AP50"], "AP": written["AP"],
            "recall": written["recall"], "precision": written["precision"],
            "F1": _f1(written["recall"], written["precision"]), "n_written": written["n_pred"],
            "n_truth": written["n_truth"], "train_min": secs / 60 or None}


def segmenter_story(name: str, d: Path, geors: list[str], budget: list[str], tag: str, extra: list[str]) -> dict:
    log = d / f"{tag}.{name}.log"
    model, out = d / f"{tag}.seg.safetensors", d / f"{tag}.seg.gpkg"
    secs = _make(geors, ["train", "segmenter", "--scene", str(d / "train.tif"), "--labels", str(d / "train.gpkg"),
                        "--class-field", "class", "--small-classes", "large-vehicle,small-vehicle", *extra, *budget,
                         "-o", str(model)], log, model)
    _make(geors, ["segment", str(d / "test.tif"), "--segmenter", str(model), "-o", str(out)], log, out)
    res = _eval(["eval", "segmentation", str(out), str(d / "test.gpkg"), "--class-field", "class",
                        "--scene", str(d / "test.tif")], log, "eval")
    per = res["classes"]
    ious = [(per.get(c) or {}).get("iou") for c in ("large-vehicle", "small-vehicle")]
    return {"story": name, "kind": "segmenter", "IoU large-vehicle": ious[0], "IoU small-vehicle": ious[1],
            "mIoU": res.get("miou"), "train_min": secs / 60 or None}


def masks_story(name: str, d: Path, geors: list[str], tag: str) -> dict:
    import geopandas as gpd

    log = d / f"{tag}.{name}.log"
    truth = gpd.read_file(d / "test.gpkg")
    boxes = truth.copy()
    boxes["geometry"] = truth.envelope
    boxes_path = d / "test_boxes.gpkg"
    boxes.to_file(boxes_path, driver="GPKG")
    row = {"story": name, "kind": "masks", "n": len(truth)}
    for label, extra in (("engine", []), ("box", ["--sam", "box"])):
        out = d / f"{tag}.masks-{label}.gpkg"
        _make(geors, ["masks", str(d / "test.tif"), "--boxes", str(boxes_path), *extra, "-o", str(out)], log, out)
        res = _eval(["eval", "masks", str(out), str(d / "test.gpkg")], log, f"eval-{label}")
        row[f"mIoU_I {label}"] = res["miou_i"]
        row[f"mIoU_P {label}"] = res["miou_p"]
    return row


# ---------------------------------------------------------------- table
def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(rows: list[dict]) -> str:
    lines = []
    for kind, cols in (("detector", ["AP50", "AP", "F1", "recall", "precision", "n_written", "n_truth", "train_min"]),
                       ("segmenter", ["IoU large-vehicle", "IoU small-vehicle", "mIoU", "train_min"]),
                       ("masks", ["n", "mIoU_I engine", "mIoU_I box", "mIoU_P engine", "mIoU_P box"])):
        sel = [r for r in rows if r.get("kind") == kind]
        if not sel:
            continue
        lines += ["", f"| {kind} story | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r in sel:
            cell = r["story"] + (f" ({r['error']})" if "error" in r else "")
            lines.append(f"| {cell} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/geors_user_stories"))
    ap.add_argument("--stories", default=",".join(STORIES), help="Comma-separated subset of " + ", ".join(STORIES))
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="Passed to the trainers (default: not passed, their own default applies).")
    ap.add_argument("--geors", default=f"{sys.executable} -m geors", help="Command that runs geors.")
    ap.add_argument("--tag", default="now", help="Prefix of the files this run writes (compare checkouts).")
    ap.add_argument("--detector-args", default="",
                    help="Extra options of `train detector` (a hand-tuned command to compare with the defaults).")
    ap.add_argument("--segmenter-args", default="", help="Extra options of `train segmenter` (e.g. --background X).")
    ap.add_argument("--reuse", action="store_true",
                    help="Keep models and outputs an earlier run with this --tag wrote; evaluate again.")
    ap.add_argument("--jobs", type=int, default=1, help="Stories run at once (each one thread).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    a = ap.parse_args(argv)
    global REUSE
    REUSE = a.reuse
    geors = shlex.split(a.geors)
    budget = [] if a.max_minutes is None else ["--max-minutes", str(a.max_minutes)]
    data = prepare(a.work)
    wanted = [s for s in a.stories.split(",") if s]
    for s in wanted:
        if s not in STORIES:
            ap.error(f"unknown story {s!r}; choose from {', '.join(STORIES)}")

    def one(s: str) -> dict:
        if s not in data:
            return {"story": s, "kind": "detector" if s.startswith("trees") or s == "vehicles" else "masks",
                    "error": "data absent"}
        d = data[s]["dir"]
        try:
            if s == "vehicles-seg":
                return segmenter_story(s, d, geors, budget, a.tag, shlex.split(a.segmenter_args))
            if s == "vehicles-masks":
                return masks_story(s, d, geors, a.tag)
            return detector_story(s, d, geors, budget, a.tag, shlex.split(a.detector_args))
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return {"story": s, "kind": "segmenter" if s == "vehicles-seg" else "masks" if s == "vehicles-masks"
                    else "detector", "error": "failed"}

    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        rows = list(pool.map(one, wanted))
    for s in wanted:
        if s in data:
            print(f"{s}: {data[s]['n_train']} objects to train on, {data[s]['n_test']} to test on", file=sys.stderr)
    print(markdown(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
