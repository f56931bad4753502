"""geors: find and outline objects in very large georeferenced rasters.

Public API: see ``__all__``. Heavy optional parts (SAM, Dask distributed) are
imported lazily inside the functions that need them.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from geors.errors import GeorsError  # noqa: E402
from geors.raster import Scene, open_scene  # noqa: E402
from geors.tiling import Tile, TileGrid  # noqa: E402

__all__ = ["__version__", "GeorsError", "Scene", "open_scene", "Tile", "TileGrid"]
