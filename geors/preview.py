"""A picture of a scene with geors layers drawn over it: the quick look after a run.

:func:`render_preview` reads the scene (or a ``bbox`` of it) *decimated* to at
most ``max_size`` pixels on the longer side with one rasterio ``out_shape``
read: GDAL takes the pixels from the overviews when the file has them, so a
20,000 x 20,000 scene costs a few MB, never the scene (without overviews
GDAL still streams the file block by block through its bounded cache; build
overviews with ``gdaladdo`` for speed). Bands are stretched to 2-98 % of the
preview's valid pixels.

Layers from a geors GeoPackage (default: ``segmentation``, ``instances``,
``detections`` where present, drawn in that order) are reprojected to the
scene CRS and drawn in class colours: segmentation filled, instances filled
semi-transparent with an outline, detections outlined. A legend (class and
count per layer), a scale bar and a north arrow (true north, from the CRS) are
added, and a footer names the scene, its CRS and ground resolution.

Drawing uses OpenCV (shapes) and Pillow (text), both already geors
dependencies; no plotting library is needed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geors.crs import crs_text, degree_width_m
from geors.errors import ConfigError, LabelError, OutputError

log = logging.getLogger(__name__)

__all__ = ["render_preview", "PreviewResult", "class_colour", "DEFAULT_LAYERS"]

DEFAULT_LAYERS = ("segmentation", "instances", "detections")
# colour-blind friendly qualitative palette (Okabe-Ito, then Tol's bright), RGB
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (238, 102, 119), (34, 136, 51), (204, 187, 68), (102, 204, 238), (170, 51, 119)]
FALLBACK_COLOUR = (255, 255, 255)
INSTANCE_ALPHA = 0.40
SEGMENT_ALPHA = 0.45


@dataclass
class PreviewResult:
    """What :func:`render_preview` drew.

    Attributes:
        path: the PNG written.
        width, height: size of the map part in pixels (the PNG adds a footer).
        decimation: scene pixels per preview pixel (below 1 when a small scene is enlarged).
        bounds: ``(minx, miny, maxx, maxy)`` shown, scene CRS.
        features: features drawn per layer.
        classes: class name -> RGB colour used.
    """

    path: Path
    width: int
    height: int
    decimation: float
    bounds: tuple[float, float, float, float]
    features: dict[str, int] = field(default_factory=dict)
    classes: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"output": str(self.path), "width": self.width, "height": self.height,
                "decimation": round(self.decimation, 3), "bounds": list(self.bounds), "features": self.features,
                "classes": sorted(self.classes)}


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of the ``index``-th class (cycles through a 12-colour palette)."""
    return PALETTE[index % len(PALETTE)]


def render_preview(
    scene_path: str | os.PathLike,
    gpkg_path: str | os.PathLike | None,
    out_path: str | os.PathLike,
    layers: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    max_size: int = 2048,
    bands: Sequence[int] | None = None,
    title: str | None = None,
    min_size: int = 800,
) -> PreviewResult:
    """Render a PNG of a scene with geors layers drawn over it.

    Args:
        scene_path: the raster (any GDAL raster with a CRS and north-up grid).
        gpkg_path: a GeoPackage (or any OGR vector file) with layers to draw, or None.
        out_path: the PNG to write (its directory must exist).
        layers: layer names to draw, bottom first; default: those of
            ``segmentation``, ``instances``, ``detections`` present in the file.
        bbox: ``(minx, miny, maxx, maxy)`` in the scene CRS to show only that part.
        max_size: longer side of the map in pixels (the scene is read decimated).
        bands: 1-based bands shown as RGB (or one band as grey); default as
            :func:`geors.open_scene` chooses.
        title: footer text; default the scene name, CRS and resolution.
        min_size: a scene (or bbox) smaller than this is enlarged by a whole
            factor (nearest) up to about this size.

    Returns:
        A :class:`PreviewResult`.

    Raises:
        SceneReadError, BandError: the scene cannot be used (as in ``open_scene``).
        ConfigError: bad ``bbox`` / ``max_size`` / unknown layer.
        LabelError: the vector file cannot be read.
        OutputError: the PNG cannot be written.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window, from_bounds

    from geors.raster import open_scene

    if int(max_size) < 64:
        raise ConfigError(f"max_size must be at least 64 pixels, got {max_size}")
    out_path = Path(out_path)
    if not out_path.parent.exists():
        raise OutputError(f"{out_path}: directory {out_path.parent} does not exist; create it first.")
    scene = open_scene(scene_path, bands=list(bands) if bands else None)
    full = Window(0, 0, scene.width, scene.height)
    if bbox is not None:
        if len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
            raise ConfigError(f"bbox must be minx,miny,maxx,maxy with min < max, got {list(bbox)}")
        win = from_bounds(*bbox, transform=scene.transform)
        try:
            win = win.intersection(full)
        except rasterio.errors.WindowError:
            raise ConfigError(f"bbox {list(bbox)} does not overlap {scene.path} "
                              f"(bounds {_bounds(full, scene.transform)})") from None
        win = win.round_offsets().round_lengths()
        if win.width < 1 or win.height < 1:
            raise ConfigError(f"bbox {list(bbox)} covers less than a pixel of {scene.path}")
    else:
        win = full
    longer = max(win.width, win.height)
    scale = min(1.0, int(max_size) / longer)
    if longer < min_size:  # small scenes are enlarged (whole pixels, nearest) so labels do not dominate
        scale = float(max(1, int(min(min_size, max_size) // longer)))
    out_w, out_h = max(1, round(win.width * scale)), max(1, round(win.height * scale))
    with rasterio.open(scene.path) as src:
        # overviews are used when present; average keeps thin bright features visible when decimating
        resampling = Resampling.average if scale < 1 else Resampling.nearest
        arr = src.read(list(scene.band_indexes), window=win, out_shape=(len(scene.band_indexes), out_h, out_w),
                       resampling=resampling, masked=True)
    rgb = _stretch(arr, max(scale, 1.0))
    bounds = _bounds(win, scene.transform)
    # preview pixel -> CRS
    px = ((bounds[2] - bounds[0]) / out_w, (bounds[3] - bounds[1]) / out_h)

    features: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    classes: dict[str, tuple[int, int, int]] = {}
    methods: dict[str, int] = {}  # instances per mask_method: how many outlines are boxes
    if gpkg_path is not None:
        frames = _read_layers(gpkg_path, layers, bounds, scene.crs)
        names = sorted({c for _, gdf in frames for c in _class_values(gdf)})
        classes = {c: class_colour(i) for i, c in enumerate(names)}
        for layer, gdf in frames:
            features[layer] = len(gdf)
            counts[layer] = {}
            for c in _class_values(gdf):
                counts[layer][c] = counts[layer].get(c, 0) + 1
            if layer == "instances" and "mask_method" in gdf.columns:
                for m in gdf["mask_method"].astype(str):
                    methods[m] = methods.get(m, 0) + 1
            rgb = _draw_layer(rgb, layer, gdf, classes, bounds, px)
    canvas = _decorate(rgb, scene, bounds, px, classes, counts, title, scale, methods)
    try:
        from PIL import Image

        Image.fromarray(canvas).save(out_path, compress_level=6)  # 'optimize' costs ~20 s on 2048^2 noise
    except OSError as exc:
        raise OutputError(f"{out_path}: cannot write the PNG ({exc}).") from None
    return PreviewResult(out_path, out_w, out_h, 1.0 / scale, bounds, features, classes)


# --------------------------------------------------------------------------- raster


def _bounds(win, transform) -> tuple[float, float, float, float]:
    """``(minx, miny, maxx, maxy)`` of a window of a north-up grid."""
    x0, y0 = transform @ (win.col_off, win.row_off)
    x1, y1 = transform @ (win.col_off + win.width, win.row_off + win.height)
    return (float(min(x0, x1)), float(min(y0, y1)), float(max(x0, x1)), float(max(y0, y1)))


def _stretch(arr: np.ma.MaskedArray, enlarge: float = 1.0) -> np.ndarray:
    """(C, H, W) masked -> (H, W, 3) uint8, 2-98 % per band over valid pixels; nodata areas dark grey.

    One band at a time, so the preview holds about one float copy of a band besides the result.
    """
    import cv2

    masked = np.ma.getmaskarray(arr).any(axis=0)
    # only nodata *areas* are drawn as such: isolated pixels that merely equal the nodata value (e.g. 255
    # on saturated ground in NEON images) keep their colour
    k = max(5, int(round(5 * enlarge)))  # areas below ~5 x 5 scene pixels are speckle
    invalid = cv2.morphologyEx(masked.astype(np.uint8), cv2.MORPH_OPEN, np.ones((k, k), np.uint8)).astype(bool)
    h, w = masked.shape
    step = max(1, int(math.sqrt(h * w / 1e6)))  # percentiles from about a million pixels
    sample_valid = ~masked[::step, ::step]
    out = np.empty((h, w, 3), np.uint8)
    n = arr.shape[0]
    for c in range(3):
        band = np.ma.getdata(arr[c if n >= 3 else min(c, n - 1)])
        vals = band[::step, ::step][sample_valid].astype(np.float64)  # percentiles without the nodata value
        vals = vals[np.isfinite(vals)]
        lo, hi = np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        v = np.nan_to_num(band.astype(np.float32), nan=lo)
        v -= lo
        v *= 255.0 / (hi - lo)
        np.clip(v, 0, 255, out=v)
        out[..., c] = (v + 0.5).astype(np.uint8)
    out[invalid] = (40, 40, 40)
    return out


# --------------------------------------------------------------------------- vectors


def _read_layers(path, layers, bounds, crs) -> list[tuple[str, object]]:
    import pyogrio

    try:
        available = [n for n, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # GDAL errors come in several classes
        raise LabelError(f"{path}: cannot read it as a vector file ({exc}).") from None
    if layers:
        missing = [n for n in layers if n not in available]
        if missing:
            raise ConfigError(f"{path}: no layer {missing[0]!r}; layers are {available}")
        names = list(layers)
    else:
        names = [n for n in DEFAULT_LAYERS if n in available] or available[:1]
    out = []
    for name in names:
        try:
            info = pyogrio.read_info(path, layer=name)
            if info.get("geometry_type") is None:
                continue  # an attribute table (ledger, runs): nothing to draw
            bbox = _bbox_in(bounds, crs, info.get("crs"))
            gdf = pyogrio.read_dataframe(path, layer=name, bbox=bbox)
        except Exception as exc:
            raise LabelError(f"{path}: cannot read layer {name!r} ({exc}).") from None
        if gdf.crs is not None and crs is not None and not gdf.crs.equals(crs):
            gdf = gdf.to_crs(crs)
        out.append((name, gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]))
    return out


def _bbox_in(bounds, scene_crs, layer_crs):
    """The preview bounds in the layer's CRS (for a spatial filter), or None when it cannot be computed."""
    if layer_crs is None or scene_crs is None:
        return tuple(bounds)
    from geors.crs import bounds_in

    try:
        return bounds_in(bounds, scene_crs, layer_crs)
    except Exception:  # noqa: BLE001 - an unusual CRS: read everything and let the reprojection clip
        return None


def _class_values(gdf) -> list[str]:
    for col in ("class", "class_name", "label"):
        if col in gdf.columns:
            return [str(v) for v in gdf[col].tolist()]
    return ["object"] * len(gdf)


def _rings(geom):
    """Exterior and interior rings of a (Multi)Polygon (or a line's coordinates) as (K, 2) arrays."""
    gt = geom.geom_type
    if gt == "Polygon":
        yield np.asarray(geom.exterior.coords), [np.asarray(r.coords) for r in geom.interiors]
    elif gt in ("MultiPolygon", "GeometryCollection"):
        for g in geom.geoms:
            yield from _rings(g)
    elif gt in ("LineString", "LinearRing"):
        yield np.asarray(geom.coords), []
    elif gt == "MultiLineString":
        for g in geom.geoms:
            yield np.asarray(g.coords), []


SHIFT = 4  # OpenCV sub-pixel bits: coordinates in 1/16 px


def _to_px(coords: np.ndarray, bounds, px) -> np.ndarray:
    x = (coords[:, 0] - bounds[0]) / px[0]
    y = (bounds[3] - coords[:, 1]) / px[1]
    return np.round(np.stack([x, y], -1) * (1 << SHIFT)).astype(np.int32)


def _draw_layer(rgb: np.ndarray, layer: str, gdf, classes, bounds, px) -> np.ndarray:
    """Segmentation: filled; detections (and tile layers): outlined; other layers: filled + outlined."""
    import cv2

    outline_only = layer in ("detections", "tiles", "tile_cores")
    h, w = rgb.shape[:2]
    thickness = max(1, round(max(h, w) / 1000))
    shapes = []  # (pixel rings, colour, is_line)
    for geom, cls in zip(gdf.geometry, _class_values(gdf), strict=True):
        is_line = geom.geom_type in ("LineString", "MultiLineString", "LinearRing")
        for ext, holes in _rings(geom):
            shapes.append(([_to_px(ext, bounds, px)] + [_to_px(r, bounds, px) for r in holes],
                           classes.get(cls, FALLBACK_COLOUR), is_line))
    if not outline_only:
        alpha = SEGMENT_ALPHA if layer == "segmentation" else INSTANCE_ALPHA
        overlay = rgb.copy()
        for rings, colour, is_line in shapes:
            if not is_line:
                cv2.fillPoly(overlay, rings, colour, cv2.LINE_AA, shift=SHIFT)
        rgb = cv2.addWeighted(overlay, alpha, rgb, 1 - alpha, 0)
        if layer == "segmentation":
            return rgb
    out = rgb.copy()
    for rings, colour, is_line in shapes:
        cv2.polylines(out, rings[:1], not is_line, colour, thickness, cv2.LINE_AA, shift=SHIFT)
    return out


# --------------------------------------------------------------------------- decorations


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _ground_units(crs) -> tuple[float, str]:
    """Metres per CRS unit along x at the scene, and the unit kind ('m' or 'deg')."""
    if crs is None:
        return 1.0, "px"
    if crs.is_geographic:
        return 1.0, "deg"
    try:
        return float(crs.linear_units_factor[1]), "m"
    except Exception:
        return 1.0, "m"


def _nice_length(target: float) -> float:
    """Largest 1, 2 or 5 x 10^k not above ``target``."""
    if target <= 0:
        return 0.0
    k = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10**k <= target:
            return m * 10**k
    return 10**k


def _format_length(metres: float) -> str:
    if metres >= 1000:
        v = metres / 1000
        return f"{v:g} km"
    if metres >= 1:
        return f"{metres:g} m"
    return f"{metres * 100:g} cm"


def _north_angle(crs, bounds) -> float:
    """Angle (radians, clockwise from the grid's up) of true north at the centre of ``bounds``."""
    if crs is None or crs.is_geographic:
        return 0.0
    try:
        from pyproj import Transformer

        cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        to_xy = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        lon, lat = to_ll.transform(cx, cy)
        x2, y2 = to_xy.transform(lon, min(lat + 0.001, 89.9))
        return math.atan2(x2 - cx, y2 - cy)
    except Exception:
        return 0.0


def _decorate(rgb, scene, bounds, px, classes, counts, title, scale, methods=None) -> np.ndarray:
    from PIL import Image, ImageDraw

    h, w = rgb.shape[:2]
    unit = max(h, w)
    fs = int(np.clip(unit / 55, 11, 28))
    font, small = _font(fs), _font(max(10, int(fs * 0.85)))
    footer_h = int(fs * 1.9)
    img = Image.new("RGB", (w, h + footer_h), (255, 255, 255))
    img.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(img, "RGBA")
    pad = max(6, fs // 2)

    # legend: class swatch + counts per layer, top left
    if classes:
        rows = []
        for c, colour in classes.items():
            parts = [f"{counts[layer].get(c, 0)} {layer}" for layer in counts if counts[layer].get(c, 0)]
            rows.append((c, colour, ", ".join(parts)))
        text_w = max(draw.textlength(f"{c}  {p}", font=font) for c, _, p in rows)
        method_txt = ("instances by " + ", ".join(f"{m} {n}" for m, n in sorted(methods.items(), key=lambda kv: -kv[1]))
                      if methods else "")
        line_h = int(fs * 1.45)
        box_w = int(max(text_w + fs * 2.6, draw.textlength(method_txt, font=small)) + 2 * pad)
        box_h = line_h * (len(rows) + bool(method_txt)) + 2 * pad
        draw.rounded_rectangle([pad, pad, pad + box_w, pad + box_h], radius=pad // 2, fill=(255, 255, 255, 215),
                               outline=(60, 60, 60, 255))
        for i, (c, colour, p) in enumerate(rows):
            y = 2 * pad + i * line_h
            sw = int(fs * 1.1)
            draw.rectangle([2 * pad, y + 1, 2 * pad + sw, y + sw], fill=colour + (255,), outline=(40, 40, 40, 255))
            tx = 2 * pad + sw + fs // 2
            draw.text((tx, y - 1), c, fill=(0, 0, 0, 255), font=font)
            draw.text((tx + draw.textlength(c + "  ", font=font), y + 1), p, fill=(70, 70, 70, 255), font=small)
        if method_txt:  # what produced the outlines, so boxes kept as fallbacks are not mistaken for outlines
            draw.text((2 * pad, 2 * pad + len(rows) * line_h + 1), method_txt, fill=(70, 70, 70, 255), font=small)

    # scale bar, bottom left
    m_per_unit, kind = _ground_units(scene.crs)
    metres_per_px = px[0] * m_per_unit
    if kind == "deg":
        lat = (bounds[1] + bounds[3]) / 2
        metres_per_px = px[0] * degree_width_m(lat)
    if kind != "px" and metres_per_px > 0:
        length_m = _nice_length(0.22 * w * metres_per_px)
        bar_px = length_m / metres_per_px
        bh = max(4, fs // 3)
        x0, y0 = 2 * pad, h - 2 * pad - bh
        label = _format_length(length_m)
        lw = draw.textlength(label, font=font)
        draw.rounded_rectangle([x0 - pad, y0 - fs - pad, x0 + max(bar_px, lw) + pad, y0 + bh + pad // 2 + 2],
                               radius=pad // 2, fill=(255, 255, 255, 200))
        for i in range(4):
            seg = [x0 + bar_px * i / 4, y0, x0 + bar_px * (i + 1) / 4, y0 + bh]
            draw.rectangle(seg, fill=(0, 0, 0, 255) if i % 2 == 0 else (255, 255, 255, 255), outline=(0, 0, 0, 255))
        draw.text((x0, y0 - fs - pad // 3), label, fill=(0, 0, 0, 255), font=font)

    # north arrow, top right
    ang = _north_angle(scene.crs, bounds)
    r = fs * 1.5
    cx, cy = w - 2 * pad - r, 2 * pad + r + fs
    draw.ellipse([cx - r - pad / 2, cy - r - fs - pad / 2, cx + r + pad / 2, cy + r + pad / 2],
                 fill=(255, 255, 255, 200))

    def rot(dx, dy):
        return (cx + dx * math.cos(ang) - dy * math.sin(ang), cy + dx * math.sin(ang) + dy * math.cos(ang))

    tip, left, right, tail = rot(0, -r), rot(-r * 0.45, r * 0.7), rot(r * 0.45, r * 0.7), rot(0, r * 0.3)
    draw.polygon([tip, left, tail], fill=(0, 0, 0, 255))
    draw.polygon([tip, right, tail], fill=(255, 255, 255, 255), outline=(0, 0, 0, 255))
    nw = draw.textlength("N", font=font)
    draw.text((tip[0] - nw / 2, tip[1] - fs * 1.2), "N", fill=(0, 0, 0, 255), font=font)

    # footer
    if title is None:
        crs = crs_text(scene.crs)
        res = abs(scene.transform.a)
        res_txt = f"{res * m_per_unit:.3g} m/px" if kind == "m" else f"{res:.3g} {kind}/px"
        title = f"{scene.name}  ·  {crs}  ·  {res_txt}  ·  {scene.width} x {scene.height} px"
        if scale < 1:
            title += f"  ·  shown at 1/{1 / scale:.3g}"
        elif scale > 1:
            title += f"  ·  shown at {scale:g}x"
    draw.text((pad, h + (footer_h - fs) // 2 - 1), title, fill=(30, 30, 30, 255), font=font)
    return np.asarray(img)
