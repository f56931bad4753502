"""Scenes: lazy, georeferenced rasters read tile by tile.

:func:`open_scene` validates a raster (GeoTIFF, COG, VRT, anything GDAL reads),
chooses bands, and returns a :class:`Scene` that reads nothing until a tile asks.

Two ways to the pixels:

* ``scene.data`` — a lazy ``xarray.DataArray`` (rioxarray + dask), chunks
  aligned to the tile stride, for users who compose their own dask graphs.
* ``scene.read_tile(tile)`` / ``scene.read_window(window)`` — what geors' own
  stages use: a direct windowed GDAL read through a per-thread dataset handle.
  Dask/rioxarray window reads cost 8-30x a plain rasterio read on small
  windows (task graph + locking per chunk); the direct read keeps the overhead
  near 1x (see ``benchmarks/bench_read.py``) while memory stays bounded by
  the window, never the scene.

Normalisation is scene-wide: per-band low/high percentiles estimated once per
scene (from an overview when the file has one, otherwise from a fixed grid of
sample windows) so every tile of a scene is stretched the same way.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geors.crs import crs_text, degree_width_m
from geors.errors import BandError, ConfigError, GeoreferenceError, SceneReadError

log = logging.getLogger(__name__)

# GDAL's block cache defaults to 5% of RAM and fills as a scene streams by, so
# peak memory grows with the scene up to that size. The CLI sets GDAL_CACHEMAX
# (see geors.cli.main.configure_environment); a library user sets it (or
# rasterio.Env) in their own process: the library changes no process-wide state.
# 64 MB holds the block row that the next row of tiles re-reads (the overlap) for
# a 20,000 px wide uint8 RGB scene with 512 px blocks (~30 MB); wider or deeper
# scenes re-decode part of the overlap, which costs ~1% of a run (reading is 1-3%
# of worker time), while a larger cache is resident memory (128 MB: +42 MiB peak
# on a 10,000² scene, benchmarks/bench_pipeline.py).
RECOMMENDED_GDAL_CACHEMAX_MB = 64

# warnings.catch_warnings swaps process-wide state: serialise the opens that use it
_WARNINGS_LOCK = threading.Lock()

__all__ = ["BandStats", "Scene", "TileImage", "open_scene"]

SUPPORTED_DTYPES = {"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


@dataclass(frozen=True)
class BandStats:
    """Scene-wide stretch: ``(value - low) / (high - low)`` clipped to [0, 1], per band.

    Attributes:
        low: per selected band, in the raster's value units.
        high: per selected band.
        percentiles: the (low, high) percentiles used, or None for a dtype stretch.
        source: where the estimate came from (overview level, sample windows).
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] | None
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TileImage:
    """Pixels of one window.

    Attributes:
        image: float32 array (C, H, W), stretched to [0, 1]; invalid pixels are 0.
            C is 3 when the scene has one selected band (replicated for RGB models).
        valid: bool array (H, W); False for nodata, masked or padded pixels.
        window: the window read, in scene pixel coordinates (may extend past the
            scene when padded).
        transform: affine transform of ``image``'s pixel grid.
    """

    image: np.ndarray
    valid: np.ndarray
    window: Window
    transform: Affine

    def rgb8(self) -> np.ndarray:
        """The first three channels as uint8 (H, W, 3), for SAM and OpenCV."""
        img = self.image[:3]
        if img.shape[0] < 3:
            img = np.repeat(img[:1], 3, axis=0)
        return np.ascontiguousarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


def _open(path: Path, quiet_georef: bool):
    """rasterio.open, without the NotGeoreferencedWarning when the caller accepts such images."""
    if not quiet_georef:
        return rasterio.open(path)
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SceneReadError(f"{path}: file not found. Check the path (is the drive mounted?).")
    if path.is_dir():
        raise SceneReadError(f"{path}: is a directory, not a raster file. Pass the .tif/.vrt file itself.")
    if path.stat().st_size == 0:
        raise SceneReadError(f"{path}: the file is empty (0 bytes). Re-download or re-export it.")


def _check_georef(path: Path, ds, allow_ungeoreferenced: bool) -> None:
    t = ds.transform
    no_transform = t == Affine.identity()
    if allow_ungeoreferenced:
        return
    gcps, _gcp_crs = ds.gcps
    if no_transform and gcps:
        raise GeoreferenceError(
            f"{path}: georeferenced only by {len(gcps)} ground control points (GCPs), not by a "
            "geotransform. Warp it to a north-up grid first, e.g. "
            f"`gdalwarp -t_srs EPSG:XXXX \"{path}\" warped.tif`."
        )
    if ds.rpcs is not None and no_transform:
        raise GeoreferenceError(
            f"{path}: has only RPC georeferencing. Orthorectify it first, e.g. "
            f"`gdalwarp -rpc -t_srs EPSG:XXXX \"{path}\" ortho.tif`."
        )
    if no_transform:
        raise GeoreferenceError(
            f"{path}: has no geotransform (pixel grid is not georeferenced). Assign one with "
            "`gdal_edit.py -a_ullr ULX ULY LRX LRY -a_srs EPSG:XXXX`, or georeference it in QGIS."
        )
    if ds.crs is None:
        raise GeoreferenceError(
            f"{path}: has no coordinate reference system. Assign one with "
            f"`gdal_edit.py -a_srs EPSG:XXXX \"{path}\"` (or Layer Properties > Source in QGIS)."
        )
    if t.b != 0 or t.d != 0:
        raise GeoreferenceError(
            f"{path}: has a rotated or sheared geotransform ({tuple(t)[:6]}). geors needs a north-up "
            f"grid: warp it first, e.g. `gdalwarp \"{path}\" northup.tif`."
        )
    if t.a <= 0 or t.e >= 0:
        # south-up or mirrored grids would flip boxes; warping normalises them.
        raise GeoreferenceError(
            f"{path}: pixel size ({t.a}, {t.e}) is not north-up (expected positive x and negative y). "
            f"Warp it first, e.g. `gdalwarp \"{path}\" northup.tif`."
        )


def _default_bands(ds) -> tuple[int, ...]:
    interp = list(ds.colorinterp)
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in interp for c in wanted):
        return tuple(interp.index(c) + 1 for c in wanted)
    if ds.count >= 3:
        return (1, 2, 3)
    return (1,)


class Scene:
    """A georeferenced raster opened lazily. Create with :func:`open_scene`.

    Attributes:
        path: the file.
        name: file name without directory (used as ``scene`` in outputs).
        width, height: pixels.
        crs: ``rasterio.crs.CRS`` (None only for ungeoreferenced training images).
        transform: pixel -> CRS affine transform (north-up).
        band_indexes: selected 1-based band indexes.
        dtype: raster data type of the selected bands.
        nodata: nodata value or None.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        bands: list[int] | tuple[int, ...] | None = None,
        allow_ungeoreferenced: bool = False,
        stats: BandStats | None = None,
        percentiles: tuple[float, float] = (2.0, 98.0),
    ):
        self.path = Path(path)
        _check_path(self.path)
        self._quiet_georef = allow_ungeoreferenced
        try:
            ds = _open(self.path, allow_ungeoreferenced)
        except RasterioIOError as exc:
            raise SceneReadError(
                f"{self.path}: not a raster GDAL can read ({exc}). Pass a GeoTIFF/COG/VRT; check that "
                "the file is complete."
            ) from None
        with ds:
            _check_georef(self.path, ds, allow_ungeoreferenced)
            self.width, self.height, self.count = ds.width, ds.height, ds.count
            self.crs = ds.crs
            self.transform: Affine = ds.transform
            self.nodata = ds.nodata
            self.block_shapes = ds.block_shapes
            self.overview_factors = ds.overviews(1) if ds.count else []
            if bands:
                bad = [b for b in bands if not (isinstance(b, int) and 1 <= b <= ds.count)]
                if bad:
                    raise BandError(
                        f"{self.path}: band index {bad[0]} out of range; the file has {ds.count} band(s) "
                        f"(valid indexes 1..{ds.count})."
                    )
                self.band_indexes = tuple(int(b) for b in bands)
            else:
                self.band_indexes = _default_bands(ds)
            dtypes = {ds.dtypes[b - 1] for b in self.band_indexes}
            if len(dtypes) > 1:
                raise BandError(f"{self.path}: selected bands have mixed data types {sorted(dtypes)}; "
                                "select bands of one type with --bands.")
            self.dtype = dtypes.pop()
            if self.dtype not in SUPPORTED_DTYPES:
                raise SceneReadError(f"{self.path}: data type {self.dtype} is not supported; convert it "
                                     "with `gdal_translate -ot Float32`.")
            flags = [ds.mask_flag_enums[b - 1] for b in self.band_indexes]
            self._all_valid = all(f == [MaskFlags.all_valid] for f in flags)
            self._nodata_mask = (not self._all_valid) and all(MaskFlags.nodata in f for f in flags)
            self.colorinterp = tuple(ds.colorinterp[b - 1].name for b in self.band_indexes)
            self.descriptions = tuple(ds.descriptions[b - 1] for b in self.band_indexes)
        self.name = self.path.name
        self.percentiles = percentiles
        self._stats = stats
        self._lock = threading.Lock()
        self._local = threading.local()

    # pickling for dask workers: drop per-thread handles
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_local", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Scene({str(self.path)!r}, {self.width}x{self.height}, bands={self.band_indexes}, "
                f"dtype={self.dtype}, crs={self.crs_name})")

    @property
    def channels(self) -> int:
        """Channels of ``read_tile(...).image``: 3 for one selected band, else the selection."""
        return 3 if len(self.band_indexes) == 1 else len(self.band_indexes)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def crs_name(self) -> str:
        """The CRS as people read it (:func:`geors.crs.crs_text`)."""
        return crs_text(self.crs)

    @property
    def gsd_m(self) -> float | None:
        """Approximate ground sampling distance in metres (None without CRS)."""
        if self.crs is None:
            return None
        if self.crs.is_geographic:
            lat = (self.transform @ (self.width / 2, self.height / 2))[1]
            return abs(self.transform.a) * degree_width_m(lat)
        factor = self.crs.linear_units_factor[1] if self.crs.linear_units_factor else 1.0
        return abs(self.transform.a) * factor

    def _ds(self):
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed:
            ds = _open(self.path, self._quiet_georef)
            self._local.ds = ds
        return ds

    def close(self) -> None:
        """Close this thread's dataset handle (others close when their thread ends)."""
        ds = getattr(self._local, "ds", None)
        if ds is not None:
            ds.close()
            self._local.ds = None

    # ------------------------------------------------------------------ data access
    @property
    def data(self):
        """Lazy ``xarray.DataArray`` (band, y, x) of the selected bands, dask chunks of ~one stride.

        Nothing is read until computed. Chunks are a multiple of the file's block
        size near 512 px, so that a 640 px tile with 128 px overlap touches at
        most four chunks.
        """
        import rioxarray

        bh, bw = self.block_shapes[0] if self.block_shapes else (512, 512)
        cy = max(bh, (512 // bh) * bh)
        cx = max(bw, (512 // bw) * bw)
        da = rioxarray.open_rasterio(self.path, chunks={"band": -1, "y": cy, "x": cx}, lock=False,
                                     masked=False)
        return da.sel(band=list(self.band_indexes))

    def read_raw(self, window: Window) -> np.ndarray:
        """Raw values of the selected bands in ``window`` (must lie inside the scene), (B, H, W)."""
        try:
            return self._ds().read(self.band_indexes, window=window)
        except RasterioIOError as exc:
            raise SceneReadError(
                f"{self.path}: failed to read window col_off={int(window.col_off)}, "
                f"row_off={int(window.row_off)}, width={int(window.width)}, height={int(window.height)} "
                f"({exc}). The file is probably truncated or corrupt: re-download it or re-export it "
                "with gdal_translate."
            ) from None

    def _valid(self, raw: np.ndarray, window: Window) -> np.ndarray:
        h, w = raw.shape[1:]
        if self._all_valid:
            valid = np.ones((h, w), dtype=bool)
        elif self._nodata_mask:
            valid = np.all(raw != self.nodata, axis=0) if not (
                isinstance(self.nodata, float) and math.isnan(self.nodata)) else np.ones((h, w), bool)
        else:
            try:
                masks = self._ds().read_masks(self.band_indexes, window=window)
            except RasterioIOError as exc:
                raise SceneReadError(f"{self.path}: failed to read the mask of window {window}: {exc}") from None
            valid = np.all(masks > 0, axis=0)
        if raw.dtype.kind == "f":
            valid &= np.all(np.isfinite(raw), axis=0)
        return valid

    @property
    def stats(self) -> BandStats:
        """Scene-wide per-band stretch, estimated once (thread-safe) and then reused."""
        if self._stats is None:
            with self._lock:
                if self._stats is None:
                    self._stats = estimate_stats(self, self.percentiles)
        return self._stats

    def normalize(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Stretch raw values (B, H, W) with the scene-wide stats to float32 [0, 1]."""
        st = self.stats
        low = np.asarray(st.low, dtype=np.float32)[:, None, None]
        inv_span = 1.0 / np.maximum(np.asarray(st.high, dtype=np.float32)[:, None, None] - low, 1e-6)
        out = raw.astype(np.float32)  # in-place arithmetic from here: ~3x faster than temporaries
        out -= low
        out *= inv_span
        np.clip(out, 0.0, 1.0, out=out)
        if not valid.all():
            out[:, ~valid] = 0.0
        if out.shape[0] == 1:
            out = np.repeat(out, 3, axis=0)
        return out

    def read_window(self, window: Window, pad_to: tuple[int, int] | None = None) -> TileImage:
        """Read and normalise any window; parts outside the scene are zero and invalid.

        Args:
            window: scene pixel window; may extend past the scene edges.
            pad_to: optional (height, width) of the returned arrays (>= window size).
        """
        c0, r0 = int(window.col_off), int(window.row_off)
        w, h = int(window.width), int(window.height)
        oh, ow = pad_to if pad_to else (h, w)
        ic0, ir0 = max(c0, 0), max(r0, 0)
        ic1, ir1 = min(c0 + w, self.width), min(r0 + h, self.height)
        image = np.zeros((self.channels, oh, ow), dtype=np.float32)
        valid = np.zeros((oh, ow), dtype=bool)
        if ic1 > ic0 and ir1 > ir0:
            inner = Window(ic0, ir0, ic1 - ic0, ir1 - ir0)
            raw = self.read_raw(inner)
            v = self._valid(raw, inner)
            ys, xs = ir0 - r0, ic0 - c0
            image[:, ys:ys + inner.height, xs:xs + inner.width] = self.normalize(raw, v)
            valid[ys:ys + inner.height, xs:xs + inner.width] = v
        transform = self.transform @ Affine.translation(c0, r0)
        return TileImage(image=image, valid=valid, window=Window(c0, r0, w, h), transform=transform)

    def read_tile(self, tile) -> TileImage:
        """Pixels of a :class:`geors.tiling.Tile`, padded to ``tile.size`` only if the scene is smaller."""
        # Tiles are full size whenever the scene is at least one tile wide/high,
        # so this pads only scenes smaller than a tile.
        return self.read_window(tile.window, pad_to=(max(tile.height, tile.size), max(tile.width, tile.size)))

    def describe(self) -> dict:
        """A JSON-able summary (what ``geors info`` shows)."""
        return {
            "path": str(self.path),
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "bands": list(self.band_indexes),
            "colorinterp": list(self.colorinterp),
            "dtype": self.dtype,
            "crs": self.crs_name,
            "crs_wkt": self.crs.to_wkt() if self.crs else None,
            "pixel_size": list(self.res),
            "gsd_m": self.gsd_m,
            "nodata": self.nodata,
            "bounds": list(rasterio.transform.array_bounds(self.height, self.width, self.transform))[::1],
            "overviews": list(self.overview_factors),
            "block_shape": list(self.block_shapes[0]) if self.block_shapes else None,
        }


def _sample_windows(width: int, height: int, n: int = 64, size: int = 256) -> list[Window]:
    """A deterministic grid of up to ``n`` windows spread over the scene."""
    if width * height <= 1024 * 1024:
        return [Window(0, 0, width, height)]
    per_axis = max(1, int(math.sqrt(n)))
    ws, hs = min(size, width), min(size, height)
    cols = np.linspace(0, width - ws, per_axis).astype(int)
    rows = np.linspace(0, height - hs, per_axis).astype(int)
    return [Window(int(c), int(r), ws, hs) for r in rows for c in cols]


def estimate_stats(scene: Scene, percentiles: tuple[float, float] = (2.0, 98.0)) -> BandStats:
    """Per-band low/high percentiles over valid pixels of the whole scene.

    Uses the coarsest overview with at least 512 px on the long side when the
    file has overviews (one small read), otherwise a grid of 64 windows of
    256 px (about 4 M pixels however large the scene).
    """
    ds = scene._ds()
    samples: list[np.ndarray] = []
    source = ""
    factors = scene.overview_factors
    usable = [f for f in factors if max(scene.width, scene.height) / f >= 512]
    if usable:
        f = max(usable)
        out_shape = (len(scene.band_indexes), max(1, scene.height // f), max(1, scene.width // f))
        try:
            arr = ds.read(scene.band_indexes, out_shape=out_shape, masked=True, resampling=Resampling.nearest)
        except RasterioIOError as exc:
            raise SceneReadError(f"{scene.path}: failed to read overview 1/{f}: {exc}") from None
        m = np.ma.getmaskarray(arr)
        valid = ~np.any(m, axis=0)
        samples.append(np.asarray(arr.data)[:, valid])
        source = f"overview 1/{f}"
    else:
        wins = _sample_windows(scene.width, scene.height)
        for win in wins:
            raw = scene.read_raw(win)
            valid = scene._valid(raw, win)
            samples.append(raw[:, valid])
        source = f"{len(wins)} sample windows"
    vals = np.concatenate(samples, axis=1) if samples else np.zeros((len(scene.band_indexes), 0))
    if vals.dtype.kind == "f":
        vals = vals[:, np.all(np.isfinite(vals), axis=0)]
    if vals.shape[1] == 0:
        lows = tuple(0.0 for _ in scene.band_indexes)
        highs = tuple(1.0 for _ in scene.band_indexes)
        source += " (no valid pixels found)"
    else:
        lo, hi = np.percentile(vals, percentiles, axis=1)
        lows = tuple(float(v) for v in lo)
        highs = tuple(float(max(h, l_ + 1e-6)) for l_, h in zip(lo, hi, strict=True))
    log.info("%s: stretch %s from %s", scene.name, list(zip(lows, highs, strict=True)), source)
    return BandStats(low=lows, high=highs, percentiles=tuple(percentiles), source=source)


def open_scene(
    path: str | os.PathLike,
    bands: list[int] | tuple[int, ...] | None = None,
    allow_ungeoreferenced: bool = False,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> Scene:
    """Open a raster lazily and validate its georeferencing and bands.

    Args:
        path: GeoTIFF, COG, VRT or any raster GDAL reads.
        bands: 1-based band indexes to use (e.g. ``[4, 3, 2]``); default: the
            red/green/blue bands by colour interpretation, else the first three,
            or the single band of a one-band raster (replicated to 3 channels).
        allow_ungeoreferenced: accept images without CRS/geotransform (training
            images with pixel-coordinate labels only).
        percentiles: low/high percentiles of the scene-wide stretch.

    Raises:
        SceneReadError: missing, empty, unreadable or unsupported file.
        GeoreferenceError: no CRS, no geotransform, GCP/RPC-only, rotated grid.
        BandError: band index out of range.
    """
    lo, hi = percentiles
    if not (0 <= lo < hi <= 100):
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    return Scene(path, bands=bands, allow_ungeoreferenced=allow_ungeoreferenced, percentiles=percentiles)
