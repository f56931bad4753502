"""Build the plugin archive for QGIS's "Install from ZIP": dist/geors_qgis-<version>.zip.

    python qgis_plugin/build_zip.py [--out DIR]

The version comes from geors_qgis/metadata.txt. Only source files go in (no
caches, no compiled code); the archive holds the folder geors_qgis/ at its root,
as QGIS expects.
"""

from __future__ import annotations

import argparse
import configparser
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "geors_qgis"
INCLUDE = (".py", ".txt", ".png", ".svg", ".md")


def version() -> str:
    cp = configparser.ConfigParser()
    cp.read(PLUGIN / "metadata.txt", encoding="utf-8")
    return cp["general"]["version"]


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"geors_qgis-{version()}.zip"
    files = sorted(p for p in PLUGIN.rglob("*") if p.is_file() and p.suffix in INCLUDE
                   and "__pycache__" not in p.parts)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            info = zipfile.ZipInfo(str(Path("geors_qgis") / p.relative_to(PLUGIN)), date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, p.read_bytes())  # fixed dates: the same sources give the same archive
        # where geors is installed from: this checkout (the PyPI name 'geors' belongs to another project)
        info = zipfile.ZipInfo("geors_qgis/geors_source.txt", date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, str(HERE.parent) + "\n")
    return target


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "dist", help="output folder (default: dist/)")
    path = build(ap.parse_args().out)
    print(path)
