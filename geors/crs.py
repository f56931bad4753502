"""CRS comparisons and transforms shared by readers and writers (one rule for "the same CRS")."""

from __future__ import annotations

__all__ = ["to_wkt", "same_crs", "bounds_in"]


def to_wkt(crs) -> str:
    """WKT of a rasterio/pyproj CRS, or the string given."""
    return crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)


def same_crs(a, b) -> bool:
    """Whether two CRSs (rasterio, pyproj, WKT, ``EPSG:...``) are the same, axis order aside; False if unreadable."""
    from pyproj import CRS

    try:
        return CRS.from_user_input(to_wkt(a)).equals(CRS.from_user_input(to_wkt(b)), ignore_axis_order=True)
    except Exception:  # noqa: BLE001 - an unreadable CRS is not the same as any other
        return False


def bounds_in(bounds: tuple[float, float, float, float], src, dst) -> tuple[float, float, float, float]:
    """``(minx, miny, maxx, maxy)`` in ``src`` as a box in ``dst`` (densified edges); unchanged if the same CRS."""
    if not dst or same_crs(src, dst):
        return tuple(bounds)
    from pyproj import Transformer

    tr = Transformer.from_crs(to_wkt(src), to_wkt(dst), always_xy=True)
    return tuple(tr.transform_bounds(*bounds, densify_pts=21))
