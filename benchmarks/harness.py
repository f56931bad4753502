"""The small harness every benchmark shares: generated scenes, threads, timing, output.

- :func:`make_big_scene` / :func:`make_object_scene`: tiled DEFLATE GeoTIFFs in EPSG:32617 (a smooth
  gradient with noise; bright round "crowns" on dark ground), written block row by block row, kept
  when they exist;
- :func:`set_threads`: one place that pins torch, OpenCV and the OpenMP/MKL variables (``--threads``);
- :class:`Timer`, :func:`rate` (units per second of a callable, warm-up first, bounded by a time
  slice) and :func:`sync` (wait for a CUDA device before the clock is read);
- :func:`parser` (``--threads``, ``--json``, ``--markdown`` and, where a benchmark asks, ``--dir``
  and ``--device``) and :func:`emit` (rows printed as an aligned table or Markdown, and written as
  JSON).

It imports numpy only at module level: ``python benchmarks/X.py --help`` stays fast, and torch,
rasterio and geors are imported by the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/tmp/geors-bench")
CRS = "EPSG:32617"


def _profile(width: int, height: int, bands: int, block: int) -> dict:
    from affine import Affine

    return dict(driver="GTiff", width=width, height=height, count=bands, dtype="uint8", crs=CRS,
                transform=Affine(0.1, 0, 400000.0, 0, -0.1, 3290000.0), tiled=True, blockxsize=block,
                blockysize=block, compress="deflate", BIGTIFF="IF_SAFER")


def write_rows(path: Path, width: int, height: int, bands: int, block: int,
                rows: Callable[[int, int], np.ndarray]) -> Path:
    """Write ``rows(r, h) -> (bands, h, width)`` block row by block row under a temporary name, then rename."""
    import rasterio
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **_profile(width, height, bands, block)) as ds:
        for r in range(0, height, block):
            h = min(block, height - r)
            ds.write(rows(r, h), window=Window(0, r, width, h))
    os.replace(tmp, path)
    return path


def make_big_scene(path: Path, size: int, bands: int = 3, block: int = 512) -> Path:
    """A tiled, DEFLATE-compressed uint8 GeoTIFF of size x size: a smooth gradient with noise (no objects)."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    x = np.arange(size, dtype=np.float32)

    def rows(r, h):
        base = ((x[None, :] + r) * 0.01 % 200).astype(np.uint8)
        arr = np.broadcast_to(base, (h, size)) + rng.integers(0, 24, size=(h, size), dtype=np.uint8)
        return np.stack([arr] * bands)

    return write_rows(path, size, size, bands, block, rows)


def make_object_scene(path: Path, size: int, objects_per_mp: float = 60.0, radius: tuple[int, int] = (12, 30),
                      block: int = 512, seed: int = 0) -> Path:
    """A size x size RGB GeoTIFF with bright round crowns (shaded, textured) on dark noisy ground.

    Something for a detector to propose boxes on (its work grows with what it finds), made in
    a second or so per 10 MP without any sample data.
    """
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    n = max(1, int(objects_per_mp * size * size / 1e6))
    cx, cy = rng.uniform(0, size, n), rng.uniform(0, size, n)
    rad = rng.uniform(*radius, n)
    colour = rng.uniform(0.6, 1.0, (n, 1)) * np.array([[90, 170, 70]])

    def rows(r, h):
        img = rng.integers(20, 60, size=(3, h, size), dtype=np.uint8).astype(np.float32)
        yy = np.arange(r, r + h, dtype=np.float32)[:, None]
        near = np.nonzero((cy + rad > r) & (cy - rad < r + h))[0]
        for i in near:
            x0, x1 = int(max(cx[i] - rad[i], 0)), int(min(cx[i] + rad[i] + 1, size))
            xx = np.arange(x0, x1, dtype=np.float32)[None, :]
            d2 = ((xx - cx[i]) ** 2 + (yy - cy[i]) ** 2) / rad[i] ** 2
            inside = d2 < 1
            shade = (1.1 - 0.5 * d2) * inside
            for b in range(3):
                band = img[b, :, x0:x1]
                band[inside] = (colour[i, b] * shade)[inside]
        return np.clip(img, 0, 255).astype(np.uint8)

    return write_rows(path, size, size, 3, block, rows)


def set_threads(n: int | None) -> None:
    """Pin torch (intra-op), OpenCV and the OpenMP/MKL variables of child processes to ``n`` threads.

    ``None`` or 0 leaves every library's default. Set it before the work starts: torch reads
    its intra-op count per call, OpenMP runtimes already started keep theirs.
    """
    if not n:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules or _importable("torch"):
        import torch

        torch.set_num_threads(n)
    if _importable("cv2"):
        import cv2

        cv2.setNumThreads(n)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def sync(device) -> None:
    """Wait for queued CUDA work (a no-op on the CPU), so that a clock read after it is honest."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.seconds = time.perf_counter() - self.t0


def rate(fn: Callable[[], object], units: float, device="cpu", min_calls: int = 1, max_calls: int = 50,
         max_seconds: float = 10.0, warmup: int = 1) -> dict:
    """Units per second of ``fn`` (each call does ``units`` of work): warm-up calls first, untimed.

    Calls ``fn`` at least ``min_calls`` times and stops after ``max_calls`` or once ``max_seconds``
    have passed, whichever comes first; every call is timed on its own (the device synced after
    it). A warm-up call that alone takes ``max_seconds`` or more is the measurement (a ViT-B
    forward on a slow CPU: a second call would double the cost and tell little more);
    ``"from_warmup": True`` says so. Returns the rate of the median call, the best call's rate,
    the call count and the seconds spent.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync(device)
        first = time.perf_counter() - t0
        if first >= max_seconds:
            return {"per_s": units / first, "best_per_s": units / first, "calls": 1, "from_warmup": True,
                    "seconds": round(time.perf_counter() - start, 3)}
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (len(times) < max_calls and time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {"per_s": units / med, "best_per_s": units / min(times), "calls": len(times),
            "seconds": round(time.perf_counter() - start, 3)}


def parser(description: str | None, with_dir: bool = False, device: str | None = None,
           threads: int | None = 0) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every benchmark shares.

    Args:
        description: the script's docstring (shown by ``--help`` as written).
        with_dir: add ``--dir`` (where generated scenes and outputs go, default ``/tmp/geors-bench``).
        device: add ``--device`` with this default (None: no option).
        threads: ``--threads`` default (0 = each library's own; ``None``: no option).
    """
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if threads is not None:
        ap.add_argument("--threads", type=int, default=threads,
                        help="torch/OpenCV/OpenMP threads (0 = library defaults; 1 for quiet measurements "
                             "on a shared machine)")
    if with_dir:
        ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="generated scenes and outputs (%(default)s)")
    if device is not None:
        ap.add_argument("--device", default=device, help="cpu, cuda, cuda:N or auto (%(default)s)")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the rows as JSON here")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return ap


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return "" if v is None else str(v)


def table(rows: Sequence[dict], markdown: bool = False, columns: Sequence[str] | None = None) -> str:
    """Rows (dicts) as an aligned text table or a Markdown table; columns default to every key, in order."""
    if not rows:
        return "(no rows)"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in cols]

    def line(values):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True))

    return "\n".join([line(cols)] + [line(row) for row in cells]).rstrip()


def emit(rows: Sequence[dict], args: argparse.Namespace | None = None, columns: Sequence[str] | None = None,
         extra: dict | None = None) -> None:
    """Print ``rows`` as a table (Markdown with ``--markdown``) and write ``{"rows": rows, **extra}`` to ``--json``."""
    markdown = bool(getattr(args, "markdown", False))
    print(table(rows, markdown, columns), flush=True)
    out = getattr(args, "json", None)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": list(rows), **(extra or {})}, indent=1, default=str) + "\n")
