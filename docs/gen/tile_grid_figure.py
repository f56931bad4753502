"""Draw docs/img/tile_grid.png: the tiles of a scene, their overlap and their cores, from ``geors.TileGrid``.

    python docs/gen/tile_grid_figure.py [--width 1500 --height 1000 --tile 640 --overlap 128] [-o PNG]

Needs matplotlib (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from affine import Affine

from geors import TileGrid

OUT = Path(__file__).resolve().parents[1] / "img" / "tile_grid.png"


def draw(width: int, height: int, tile: int, overlap: int, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    scene = SimpleNamespace(width=width, height=height, transform=Affine.identity(), crs=None)
    grid = TileGrid(scene, size=tile, overlap=overlap)
    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(7.5, 5.4), dpi=90)
    ax.add_patch(Rectangle((0, 0), width, height, fill=False, lw=2.5, ec="black"))
    for k, t in enumerate(grid):
        c = colours[k % len(colours)]
        core = t.core
        ax.add_patch(Rectangle((core.col_off, core.row_off), core.width, core.height, fc=c, alpha=0.22, ec="none"))
        ax.add_patch(Rectangle((core.col_off, core.row_off), core.width, core.height, fill=False, ec=c, lw=1.0,
                               ls="--"))
        ax.add_patch(Rectangle((t.col_off + 4 * (k % 3), t.row_off + 4 * (k % 3)), t.width, t.height,
                               fill=False, ec=c, lw=1.6))
        ax.text(core.col_off + core.width / 2, core.row_off + core.height / 2, f"tile ({t.row}, {t.col})\ncore",
                ha="center", va="center", fontsize=8, color="black")
    # an object whose box straddles a seam: only the tile whose core holds its centre keeps it
    x, y = grid.col_starts[1] + overlap / 2 - 20, 300
    owner = grid.owner(x, y)
    ax.add_patch(Rectangle((x - 45, y - 35), 90, 70, fill=False, ec="black", lw=2))
    ax.add_patch(Circle((x, y), 8, color="black"))
    ax.annotate(f"object: its box centre lies in\nthe core of tile ({owner.row}, {owner.col}), which keeps it",
                (x, y), (x + 120, y - 190), fontsize=8, color="black", bbox={"fc": "white", "ec": "none", "alpha": 0.85},
                arrowprops={"arrowstyle": "->", "color": "black"})
    s0, e0 = grid.col_starts[1], grid.col_starts[0] + tile
    ax.annotate("", (s0, height + 40), (e0, height + 40), arrowprops={"arrowstyle": "<->"})
    ax.text((s0 + e0) / 2, height + 85, f"overlap d = {overlap} px", ha="center", fontsize=8)
    ax.annotate("", (0, -40), (tile, -40), arrowprops={"arrowstyle": "<->"})
    ax.text(tile / 2, -70, f"tile size D = {tile} px", ha="center", fontsize=8)
    ax.set_xlim(-30, width + 30)
    ax.set_ylim(height + 130, -110)
    ax.set_aspect("equal")
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    ax.set_title(f"{width} x {height} px scene: {grid.shape[0]} x {grid.shape[1]} tiles "
                 f"(solid), cores (shaded) partition the scene", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1500)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--tile", type=int, default=640)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("-o", "--out", type=Path, default=OUT)
    a = p.parse_args()
    print(draw(a.width, a.height, a.tile, a.overlap, a.out))


if __name__ == "__main__":
    main()
