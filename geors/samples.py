"""Real sample data: the NEON tree-crown images shipped in the ``deepforest`` wheel.

The wheel is fetched with ``pip download deepforest==2.1.0 --no-deps`` (nothing
is installed) and its ``deepforest/data/`` folder is unpacked into the geors
cache (``$GEORS_CACHE_DIR`` or ``~/.cache/geors``) under ``samples/neon``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from geors.errors import DownloadError
from geors.paths import cache_dir

log = logging.getLogger(__name__)

NEON_FILES = (
    "OSBS_029.tif", "OSBS_029.csv", "OSBS_029.xml", "SOAP_061.png", "SOAP_061.xml",
    "2019_YELL_2_528000_4978000_image_crop2.png", "2019_YELL_2_528000_4978000_image_crop2.xml",
    "2019_YELL_2_541000_4977000_image_crop.png", "2019_YELL_2_541000_4977000_image_crop.xml",
)
DEEPFOREST_SPEC = "deepforest==2.1.0"


def neon_dir() -> Path:
    return cache_dir("samples", "neon")


def fetch_neon(force: bool = False) -> dict[str, Path]:
    """Make sure the NEON sample files are in the cache; return name -> path.

    Raises:
        DownloadError: pip could not fetch the wheel (offline, blocked index).
    """
    target = neon_dir()
    if not force and all((target / f).exists() for f in NEON_FILES):
        return {f: target / f for f in NEON_FILES}
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", DEEPFOREST_SPEC, "--no-deps", "-d", tmp, "-q"]
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("deepforest-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DownloadError(
                f"could not download the NEON sample ({DEEPFOREST_SPEC} from PyPI): "
                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'no wheel'}. Check the network, "
                f"or run `pip download {DEEPFOREST_SPEC} --no-deps` elsewhere and unzip its deepforest/data/ "
                f"folder into {target}.")
        with zipfile.ZipFile(wheels[0]) as zf:
            for member in zf.namelist():
                if member.startswith("deepforest/data/") and not member.endswith("/"):
                    name = member.rsplit("/", 1)[1]
                    tmp_out = target / (name + ".part")
                    with zf.open(member) as src, open(tmp_out, "wb") as dst:
                        dst.write(src.read())
                    os.replace(tmp_out, target / name)
    missing = [f for f in NEON_FILES if not (target / f).exists()]
    if missing:
        raise DownloadError(f"the {DEEPFOREST_SPEC} wheel lacks expected sample files {missing}")
    return {f: target / f for f in NEON_FILES}
