"""CRS comparisons, reprojection and true areas, shared by readers and writers.

One rule for "the same CRS" (:func:`same_crs`), one way to turn any CRS into
text (:func:`to_wkt`) and into a pyproj CRS (:func:`as_pyproj`), geometries
reprojected with one call to PROJ (:func:`transform_geometries`), geodesic
areas (:func:`areas_m2`) and pixel boxes as polygons in CRS units
(:func:`pixel_box_to_polygon`), and a CRS as people read it (:func:`crs_text`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import shapely

__all__ = ["to_wkt", "as_pyproj", "same_crs", "bounds_in", "transform_geometries", "areas_m2",
           "pixel_box_to_polygon", "crs_text"]


def to_wkt(crs) -> str:
    """WKT of a rasterio/pyproj CRS, or the string given."""
    return crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)


def as_pyproj(crs):
    """A ``pyproj.CRS`` from a rasterio/pyproj CRS, WKT or ``EPSG:...`` (parsed once per text)."""
    return _parse(to_wkt(crs))


@functools.lru_cache(maxsize=64)
def _parse(text: str):
    from pyproj import CRS

    return CRS.from_user_input(text)


def same_crs(a, b) -> bool:
    """Whether two CRSs (rasterio, pyproj, WKT, ``EPSG:...``) are the same, axis order aside; False if unreadable."""
    try:
        return as_pyproj(a).equals(as_pyproj(b), ignore_axis_order=True)
    except Exception:  # noqa: BLE001 - an unreadable CRS is not the same as any other
        return False


def bounds_in(bounds: tuple[float, float, float, float], src, dst) -> tuple[float, float, float, float]:
    """``(minx, miny, maxx, maxy)`` in ``src`` as a box in ``dst`` (densified edges); unchanged if the same CRS."""
    if not dst or same_crs(src, dst):
        return tuple(bounds)
    from pyproj import Transformer

    tr = Transformer.from_crs(to_wkt(src), to_wkt(dst), always_xy=True)
    return tuple(tr.transform_bounds(*bounds, densify_pts=21))


def transform_geometries(transformer, geoms: np.ndarray) -> np.ndarray:
    """An object array of shapely geometries (None allowed) through a ``pyproj.Transformer``, one call to PROJ."""
    return shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def pixel_box_to_polygon(box_xyxy: Sequence[float], transform) -> shapely.Polygon:
    """A pixel box (xmin, ymin, xmax, ymax; x = column) as a polygon in CRS units through an affine ``transform``."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    corners = [transform @ (x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    return shapely.Polygon(corners)


@functools.lru_cache(maxsize=64)
def _geodesic(wkt: str):
    """The ellipsoid of ``wkt``'s datum (``pyproj.Geod``) and a transformer to its (lon, lat); None without a datum."""
    from pyproj import Geod, Transformer

    pcrs = _parse(wkt)
    geo = pcrs.geodetic_crs
    if geo is None or geo.ellipsoid is None:
        return None
    ell = geo.ellipsoid
    return Geod(a=ell.semi_major_metre, b=ell.semi_minor_metre), Transformer.from_crs(pcrs, geo, always_xy=True)


def areas_m2(geoms: Sequence, crs) -> np.ndarray:
    """True (geodesic) areas in square metres of geometries in ``crs``.

    Vertices are taken to longitude/latitude on the ellipsoid of ``crs``'s own
    datum and the area is computed on that ellipsoid (``pyproj.Geod``), so the
    result does not depend on the projection's scale distortion (EPSG:3857 at
    60 degrees N would otherwise report 4x the area). Edges are the straight
    lines of ``crs`` sampled at the vertices, which for objects up to a few km is
    far below pixel size. A CRS without a datum (engineering CRS) falls back to
    planar area scaled by the axis unit. None/empty geometries get 0.
    """
    if len(geoms) == 0:
        return np.zeros(0)
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = list(geoms)
    present = ~(shapely.is_missing(arr) | shapely.is_empty(arr))
    out = np.zeros(len(arr))
    if not present.any():
        return out
    wkt = to_wkt(crs)
    geodesic = _geodesic(wkt)
    if geodesic is None:
        pcrs = _parse(wkt)
        unit = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
        out[present] = shapely.area(arr[present]) * unit * unit
        return out
    geod, tr = geodesic
    # counter-clockwise shells, clockwise holes: Geod adds shells and subtracts holes by orientation
    lonlat = shapely.orient_polygons(transform_geometries(tr, arr[present]))
    out[present] = [abs(geod.geometry_area_perimeter(g)[0]) for g in lonlat]
    return out


def crs_text(crs) -> str:
    """A CRS as people read it, for messages, ``geors info`` and previews: ``EPSG:32617`` where the CRS has
    an EPSG code, else its name and ``(custom WKT)``; ``no CRS`` for None."""
    if crs is None:
        return "no CRS"
    try:
        code = crs.to_epsg() if hasattr(crs, "to_epsg") else as_pyproj(crs).to_epsg()
        return f"EPSG:{code}" if code else f"{as_pyproj(crs).name} (custom WKT)"
    except Exception:  # noqa: BLE001 - any CRS object or text pyproj cannot read
        return str(crs)[:80]


METRES_PER_DEGREE = 111_320.0  # one degree of longitude at the equator (WGS 84), metres


def degree_width_m(lat: float) -> float:
    """Ground width of one degree of longitude at latitude ``lat`` (degrees), metres: the approximation used
    for the ground sampling distance and scale bars of geographic scenes."""
    return METRES_PER_DEGREE * math.cos(math.radians(lat))
