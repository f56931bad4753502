"""Build the plugin archive for QGIS's "Install from ZIP": dist/geors_qgis-<version>.zip.

    python qgis_plugin/build_zip.py [--out DIR] [--no-wheel]

The version comes from geors_qgis/metadata.txt. The plugin's source files go in
(no caches, no compiled code), with a wheel of geors itself
(geors_qgis/wheels/geors_gis-<version>-py3-none-any.whl, about 5 MB with the
default models) that *Set up environment* installs, so neither GitHub nor the
checkout is needed on the analyst's machine; and geors_source.txt, the checkout
the archive was built from. The archive holds the folder geors_qgis/ at its root,
as QGIS expects.
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "geors_qgis"
ROOT = HERE.parent
INCLUDE = (".py", ".txt", ".png", ".svg", ".md")
FIXED_DATE = (2024, 1, 1, 0, 0, 0)


def version() -> str:
    cp = configparser.ConfigParser()
    cp.read(PLUGIN / "metadata.txt", encoding="utf-8")
    return cp["general"]["version"]


def build_wheel(out_dir: Path) -> Path:
    """A wheel of geors built from a copy of the checkout's sources (pyproject.toml, README.md, geors/), so
    the build leaves nothing in the checkout. Uses this Python's setuptools when it has them (offline), else
    pip's isolated build."""
    with tempfile.TemporaryDirectory(prefix="geors-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "geors", src / "geors", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        isolated = not all(importlib.util.find_spec(m) for m in ("setuptools", "wheel"))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
               *([] if isolated else ["--no-build-isolation"]), "-w", str(Path(tmp) / "out"), str(src)]
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200"}  # file dates in the wheel: the same sources, same wheel
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        (wheel,) = (Path(tmp) / "out").glob("*.whl")
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheel, out_dir / wheel.name))


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)  # fixed dates: the same sources give the same archive
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build(out_dir: Path, wheel: bool = True) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"geors_qgis-{version()}.zip"
    files = sorted(p for p in PLUGIN.rglob("*") if p.is_file() and p.suffix in INCLUDE
                   and "__pycache__" not in p.parts and p.name != "geors_source.txt")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            _add(zf, str(Path("geors_qgis") / p.relative_to(PLUGIN)), p.read_bytes())
        # where geors is installed from: this checkout (the PyPI name 'geors' belongs to another project)
        _add(zf, "geors_qgis/geors_source.txt", (str(ROOT) + "\n").encode())
        if wheel:
            with tempfile.TemporaryDirectory(prefix="geors-zip-") as tmp:
                whl = build_wheel(Path(tmp))
                _add(zf, f"geors_qgis/wheels/{whl.name}", whl.read_bytes())
    return target


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    ap.add_argument("--no-wheel", action="store_true", help="leave out the geors wheel (then Set up environment "
                                                            "installs from the checkout recorded in the archive)")
    args = ap.parse_args()
    path = build(args.out, wheel=not args.no_wheel)
    print(path)
