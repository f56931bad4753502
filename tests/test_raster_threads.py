"""Regression: a NotGeoreferencedWarning escaped when two threads opened plain images at once
(``warnings.catch_warnings`` swaps process-wide state; geors now serialises those opens)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import rasterio


def test_no_georeference_warning_escapes_under_threads(tmp_path):
    from rasterio.errors import NotGeoreferencedWarning

    from geors.raster import open_scene

    path = tmp_path / "plain.png"
    with rasterio.open(path, "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 64, 64), np.uint8))
    start = threading.Barrier(4)

    def work():
        start.wait()
        for _ in range(150):
            open_scene(path, allow_ungeoreferenced=True).close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]
