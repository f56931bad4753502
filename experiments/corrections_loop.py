"""One round of the analyst's loop (issue 28), simulated from truth boxes: review -> correct -> retrain.

For each story a labelled scene is detected with a model; on one half of the scene (the *corrected* half) the
analyst's round is simulated in the output GeoPackage itself, as QGIS would save it: detections that match no
truth box (IoU < 0.5, class-aware, greedy by score) are deleted, truth boxes that no detection matches are drawn
(with their class), and the half is drawn as the ``reviewed_area`` layer. Then, through the CLI only::

    geors train detector --corrections RUN.gpkg -o FT.safetensors --max-minutes M
    geors detect SCENE.tif -o AFTER.gpkg --model FT.safetensors

and precision / recall / F1 (IoU >= 0.5, class-aware, the rows that pass the threshold each model wrote) are
computed on the *other* half before and after. A box belongs to the half holding its centre.

Stories:

- ``trees``: the default tree model (``r2cnn-neon-trees``) on NEON OSBS_029 (61 crowns; ``geors sample neon``),
  left half corrected, right half scored.
- ``yell``: a tree model trained on own labels: NEON YELL crop2 (574 crowns, ``--own-minutes``) trains, the
  YELL crop (279 crowns) is the scene: left half corrected, right half scored (``trees-two-images`` of
  ``benchmarks/user_stories.py``).
- ``vehicles``: a model trained on own labels: DOTA P1888 (``../shared/data/dota-P1888``) split as
  ``benchmarks/user_stories.py`` does (top 55 % trains, with ``--max-minutes --own-minutes``); its bottom 45 %
  is the scene: left half corrected, right half scored.

Every command runs with one thread (``OMP_NUM_THREADS=1``). Run::

    python experiments/corrections_loop.py --work /tmp/corrections_loop --max-minutes 3 --own-minutes 5 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import user_stories as us  # noqa: E402  (the same scenes, labels and split as the user stories)

GEORS = [sys.executable, "-m", "geors"]


def run(args: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ geors " + shlex.join(args) + "\n")
        f.flush()
        rc = subprocess.run([*GEORS, *args], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"geors {shlex.join(args)} exited {rc}: see {log}")
    return time.perf_counter() - t0


def boxes_of(path: Path, layer: str, class_field: str = "class", passing: bool = False):
    """(xyxy in the layer's CRS, classes, scores or None, fids) of a layer."""
    import pyogrio
    import shapely

    gdf = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True)
    if passing:
        gdf = gdf[gdf["passes_threshold"] == 1]
    b = shapely.bounds(gdf.geometry.to_numpy()).reshape(-1, 4)
    scores = gdf["score"].to_numpy(float) if "score" in gdf else None
    return b, gdf[class_field].astype(str).to_numpy(), scores, gdf.index.to_numpy(), gdf.crs


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def match(pred, pred_cls, scores, truth, truth_cls) -> tuple[np.ndarray, np.ndarray]:
    """Greedy by score, IoU >= 0.5, same class: (pred matched, truth matched)."""
    pm, tm = np.zeros(len(pred), bool), np.zeros(len(truth), bool)
    if not len(pred) or not len(truth):
        return pm, tm
    m = iou(pred, truth)
    for i in np.argsort(-scores, kind="stable"):
        cand = [j for j in np.argsort(-m[i]) if m[i, j] >= 0.5 and not tm[j] and truth_cls[j] == pred_cls[i]]
        if cand:
            pm[i], tm[cand[0]] = True, True
    return pm, tm


def in_half(b: np.ndarray, split_x: float, right: bool) -> np.ndarray:
    cx = (b[:, 0] + b[:, 2]) / 2
    return cx >= split_x if right else cx < split_x


def scores_on(out: Path, truth: Path, split_x: float) -> dict:
    p, pc, ps, _, _ = boxes_of(out, "detections", passing=True)
    t, tc, _, _, _ = boxes_of(truth, _only_layer(truth))
    p, pc, ps = p[in_half(p, split_x, True)], pc[in_half(p, split_x, True)], ps[in_half(p, split_x, True)]
    sel = in_half(t, split_x, True)
    t, tc = t[sel], tc[sel]
    pm, tm = match(p, pc, ps, t, tc)
    prec = float(pm.mean()) if len(p) else None
    rec = float(tm.mean()) if len(t) else None
    f1 = 0.0 if not prec or not rec else 2 * prec * rec / (prec + rec)
    return {"n_pred": int(len(p)), "n_truth": int(len(t)), "tp": int(pm.sum()), "precision": prec, "recall": rec,
            "F1": f1}


def _only_layer(path: Path) -> str:
    import pyogrio

    return str(pyogrio.list_layers(path)[0][0])


def correct(out: Path, truth: Path, split_x: float, scene_bounds) -> dict:
    """The analyst's round on the left half, saved in ``out`` as QGIS saves an edited layer."""
    import geopandas as gpd
    import pyogrio
    import shapely

    p, pc, ps, fids, crs = boxes_of(out, "detections")
    t, tc, _, _, _ = boxes_of(truth, _only_layer(truth))
    left_p, left_t = in_half(p, split_x, False), in_half(t, split_x, False)
    pm, tm = match(p[left_p], pc[left_p], ps[left_p], t[left_t], tc[left_t])
    wrong = fids[left_p][~pm]
    missed = t[left_t][~tm]
    missed_cls = tc[left_t][~tm]
    con = sqlite3.connect(out)
    with con:
        con.executemany("DELETE FROM detections WHERE fid = ?", [(int(f),) for f in wrong])
    con.close()
    if len(missed):
        drawn = gpd.GeoDataFrame({"class": list(missed_cls)}, geometry=[shapely.box(*b) for b in missed], crs=crs)
        pyogrio.write_dataframe(drawn, out, layer="detections", append=True)
    x0, y0, x1, y1 = scene_bounds
    area = gpd.GeoDataFrame({"note": ["reviewed"]}, geometry=[shapely.box(x0, y0, split_x, y1)], crs=crs)
    pyogrio.write_dataframe(area, out, layer="reviewed_area")
    return {"deleted": int(len(wrong)), "drawn": int(len(missed)), "kept": int(pm.sum())}


def story(name: str, scene: Path, truth: Path, model: str | None, work: Path, minutes: float, log: Path,
          extra: list[str], seeds: list[int]) -> list[dict]:
    import rasterio

    with rasterio.open(scene) as ds:
        bounds = tuple(ds.bounds)
    split_x = (bounds[0] + bounds[2]) / 2
    before = work / f"{name}.before.gpkg"
    before.unlink(missing_ok=True)
    model_args = ["--model", model] if model else []
    run(["detect", str(scene), "-o", str(before), *model_args, "--threads", "1"], log)
    scored_before = scores_on(before, truth, split_x)
    edits = correct(before, truth, split_x, bounds)
    rows = []
    for seed in seeds:
        after = work / f"{name}.after.seed{seed}.gpkg"
        ft = work / f"{name}.ft.seed{seed}.safetensors"
        for p in (after, ft):
            p.unlink(missing_ok=True)
        t_train = run(["train", "detector", "--corrections", str(before), "-o", str(ft), "--max-minutes",
                       str(minutes), "--seed", str(seed), "--progress", "none", *extra], log)
        run(["detect", str(scene), "-o", str(after), "--model", str(ft), "--threads", "1"], log)
        rows.append({"story": name, "seed": seed, "edits": edits, "before": scored_before,
                     "after": scores_on(after, truth, split_x), "train_minutes": round(t_train / 60, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/corrections_loop"))
    ap.add_argument("--stories", default="trees,yell,vehicles")
    ap.add_argument("--max-minutes", type=float, default=3.0, help="budget of each fine-tune from corrections")
    ap.add_argument("--own-minutes", type=float, default=5.0, help="budget of the vehicles model's first training")
    ap.add_argument("--train-args", default="", help="more options of the fine-tune, e.g. '--lr 1e-3'")
    ap.add_argument("--seeds", default="0", help="comma-separated --seed values of the fine-tune, one round each")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    data = us.prepare(a.work / "data")
    rows = []
    extra = shlex.split(a.train_args)
    seeds = [int(v) for v in a.seeds.split(",") if v.strip()]
    for name in a.stories.split(","):
        log = a.work / f"{name}.log"
        if name == "trees":
            d = a.work / "trees"
            d.mkdir(exist_ok=True)
            img = us._image(us.NEON / "OSBS_029.tif")
            us._write_part(d / "scene", img, us._read_voc(us.NEON / "OSBS_029.xml"),
                           (0, 0, img.shape[2], img.shape[1]), "EPSG:32617", (404000.0, 3285000.0), 0.1)
            rows += story("trees", d / "scene.tif", d / "scene.gpkg", None, d, a.max_minutes, log, extra, seeds)
        else:  # an own model, trained once on the story's training part, corrected on its test part
            key = {"yell": "trees-two-images", "vehicles": "vehicles"}[name]
            if key not in data:
                print(f"{name}: ../shared/data/dota-P1888 not found; skipped", file=sys.stderr)
                continue
            d = data[key]["dir"]
            own = d / "own.safetensors"
            if not own.exists():
                run(["train", "detector", "--scene", str(d / "train.tif"), "--labels", str(d / "train.gpkg"),
                     "--class-field", "class", "-o", str(own), "--max-minutes", str(a.own_minutes),
                     "--progress", "none"], log)
            rows += story(name, d / "test.tif", d / "test.gpkg", str(own), d, a.max_minutes, log, extra, seeds)
    print("\n| story | seed | corrections (left half) | right half before: P / R / F1 | after: P / R / F1 | "
          "fine-tune min |")
    print("|---|---|---|---|---|---|")
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        b, af, e = r["before"], r["after"], r["edits"]
        print(f"| {r['story']} | {r['seed']} | {e['kept']} kept, {e['deleted']} deleted, {e['drawn']} drawn | "
              f"{f(b['precision'])} / {f(b['recall'])} / {f(b['F1'])} ({b['tp']} of {b['n_truth']}) | "
              f"{f(af['precision'])} / {f(af['recall'])} / {f(af['F1'])} ({af['tp']} of {af['n_truth']}) | "
              f"{r['train_minutes']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
