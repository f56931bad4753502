"""Draw the plugin icon (qgis_plugin/geors_qgis/icon.png): a tiled raster with outlined objects.

Run with any Python that has Pillow: ``python qgis_plugin/make_icon.py``.
"""

from pathlib import Path

from PIL import Image, ImageDraw


def draw(size: int = 64) -> Image.Image:
    s = size / 64
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([2 * s, 2 * s, 62 * s, 62 * s], radius=8 * s, fill=(46, 94, 62, 255))
    for v in (22, 42):  # tile seams
        d.line([v * s, 4 * s, v * s, 60 * s], fill=(120, 170, 130, 255), width=max(1, round(s)))
        d.line([4 * s, v * s, 60 * s, v * s], fill=(120, 170, 130, 255), width=max(1, round(s)))
    for cx, cy, r in ((16, 16, 7), (40, 26, 9), (24, 44, 8), (48, 48, 6)):  # crowns with their boxes
        d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=(120, 200, 90, 255))
        d.rectangle([(cx - r - 1) * s, (cy - r - 1) * s, (cx + r + 1) * s, (cy + r + 1) * s],
                    outline=(255, 160, 20, 255), width=max(1, round(2 * s)))
    return img


if __name__ == "__main__":
    out = Path(__file__).parent / "geors_qgis" / "icon.png"
    draw().save(out, optimize=True)
    print(out, out.stat().st_size, "bytes")
