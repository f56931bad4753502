"""Tile grid with overlap and exact core partition.

A scene of ``width x height`` pixels is cut into tiles of ``size`` pixels with
``overlap`` pixels shared between neighbours (stride = size - overlap). Edge
tiles are shifted back inside the scene so that every tile is full size; only a
scene smaller than one tile gives a smaller (padded at read time) tile.

Each tile has a *core*: the tile minus half of the overlap on each inner side
(the full edge on scene borders). Cores partition the scene exactly, so an
object belongs to exactly one tile: the one whose core contains its box centre.
All windows are in scene pixel coordinates (column = x, row = y).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from affine import Affine
from rasterio.windows import Window

from geors.errors import ConfigError

__all__ = ["Tile", "TileGrid", "axis_starts", "axis_core_bounds", "window_bounds"]


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of tiles along one axis, the last one shifted back inside.

    The one rule for every grid geors cuts: :class:`TileGrid`, the training
    grid (:func:`geors.train.crops.grid_tiles`) and C2FNet's windows
    (:func:`geors.models.c2fnet.window_counts`).

    Args:
        length: axis length in pixels.
        size: tile size in pixels.
        stride: step between tile starts in pixels (size - overlap).
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def axis_core_bounds(starts: Sequence[int], length: int, size: int) -> list[tuple[int, int]]:
    """Core intervals ``[lo, hi)`` along one axis; they partition ``[0, length)``.

    The boundary between neighbours is the middle of their shared strip, so each
    core keeps at least half of the overlap as margin towards its neighbour.
    """
    ends = [min(s + size, length) for s in starts]
    cuts = [0]
    for i in range(len(starts) - 1):
        cuts.append((starts[i + 1] + ends[i]) // 2)
    cuts.append(length)
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


@dataclass(frozen=True)
class Tile:
    """One tile of a scene.

    Attributes:
        id: deterministic id ``r{row}_c{col}`` (grid row/column, not pixels).
        row: grid row index.
        col: grid column index.
        window: the tile's pixels in scene pixel coordinates.
        core: the part of ``window`` this tile owns, scene pixel coordinates.
        transform: affine transform of the tile (pixel -> scene CRS).
        crs: scene CRS (a ``rasterio.crs.CRS``), carried so a tile stands alone.
        size: nominal tile size; reads are padded to ``size`` when the scene
            is smaller than one tile.
    """

    id: str
    row: int
    col: int
    window: Window
    core: Window
    transform: Affine
    crs: object = field(compare=False, repr=False)
    size: int = 640

    @property
    def col_off(self) -> int:
        return int(self.window.col_off)

    @property
    def row_off(self) -> int:
        return int(self.window.row_off)

    @property
    def width(self) -> int:
        return int(self.window.width)

    @property
    def height(self) -> int:
        return int(self.window.height)

    @property
    def core_in_tile(self) -> Window:
        """The core window in tile-local pixel coordinates."""
        return Window(
            self.core.col_off - self.window.col_off,
            self.core.row_off - self.window.row_off,
            self.core.width,
            self.core.height,
        )

    def owns(self, x: float, y: float) -> bool:
        """Whether the scene pixel point (x=column, y=row) lies in this tile's core.

        Half-open on both axes, so a point on a shared core edge has exactly one
        owner.
        """
        c = self.core
        return (c.col_off <= x < c.col_off + c.width) and (c.row_off <= y < c.row_off + c.height)

    def owns_local(self, x: float, y: float) -> bool:
        """Like :meth:`owns` for tile-local pixel coordinates."""
        return self.owns(x + self.window.col_off, y + self.window.row_off)

    def bounds(self) -> tuple[float, float, float, float]:
        """Tile footprint ``(minx, miny, maxx, maxy)`` in scene CRS units."""
        return window_bounds(Window(0, 0, self.window.width, self.window.height), self.transform)


def window_bounds(win: Window, transform: Affine) -> tuple[float, float, float, float]:
    """Footprint ``(minx, miny, maxx, maxy)`` of a pixel window under ``transform``."""
    x0, y0 = win.col_off, win.row_off
    xs, ys = [], []
    for dx, dy in ((0, 0), (win.width, 0), (0, win.height), (win.width, win.height)):
        x, y = transform @ (x0 + dx, y0 + dy)
        xs.append(x)
        ys.append(y)
    return min(xs), min(ys), max(xs), max(ys)


class TileGrid(Sequence[Tile]):
    """Tiles of ``size`` px with ``overlap`` px over a scene; indexable, len, iterable.

    Args:
        scene: a :class:`geors.raster.Scene`, or anything with ``width``,
            ``height``, ``transform`` and ``crs`` attributes.
        size: tile size D in pixels (default 640, R2-CNN).
        overlap: overlap d in pixels (default 128 = 20%); should be at least
            the largest object size so the owner tile sees objects whole.
    """

    def __init__(self, scene, size: int = 640, overlap: int = 128):
        if int(size) != size or size < 16:
            raise ConfigError(f"tile size must be an integer >= 16 pixels, got {size!r}")
        if int(overlap) != overlap or overlap < 0 or overlap >= size:
            raise ConfigError(
                f"overlap must be an integer in [0, tile size) = [0, {size}), got {overlap!r}"
            )
        self.size = int(size)
        self.overlap = int(overlap)
        self.stride = self.size - self.overlap
        self.width = int(scene.width)
        self.height = int(scene.height)
        self.transform: Affine = scene.transform
        self.crs = scene.crs
        self.col_starts = axis_starts(self.width, self.size, self.stride)
        self.row_starts = axis_starts(self.height, self.size, self.stride)
        self._col_cores = axis_core_bounds(self.col_starts, self.width, self.size)
        self._row_cores = axis_core_bounds(self.row_starts, self.height, self.size)

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape (rows, cols)."""
        return len(self.row_starts), len(self.col_starts)

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        r, c = divmod(index, len(self.col_starts))
        return self.tile(r, c)

    def __iter__(self) -> Iterator[Tile]:
        for r in range(len(self.row_starts)):
            for c in range(len(self.col_starts)):
                yield self.tile(r, c)

    def tile(self, row: int, col: int) -> Tile:
        """The tile at grid position (row, col)."""
        x0, y0 = self.col_starts[col], self.row_starts[row]
        w = min(self.size, self.width - x0)
        h = min(self.size, self.height - y0)
        (cx0, cx1), (cy0, cy1) = self._col_cores[col], self._row_cores[row]
        return Tile(
            id=f"r{row}_c{col}",
            row=row,
            col=col,
            window=Window(x0, y0, w, h),
            core=Window(cx0, cy0, cx1 - cx0, cy1 - cy0),
            transform=self.transform @ Affine.translation(x0, y0),
            crs=self.crs,
            size=self.size,
        )

    def owner(self, x: float, y: float) -> Tile:
        """The tile whose core contains scene pixel point (x=column, y=row)."""
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise ValueError(f"point ({x}, {y}) is outside the scene {self.width}x{self.height}")
        col = next(i for i, (lo, hi) in enumerate(self._col_cores) if lo <= x < hi)
        row = next(i for i, (lo, hi) in enumerate(self._row_cores) if lo <= y < hi)
        return self.tile(row, col)
