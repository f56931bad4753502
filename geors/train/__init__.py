"""Training: labels from GIS files, augmentation, anchors, training loops.

``geors.train(...)`` itself trains a model from scenes and label files: this
package is callable and calls :func:`geors.train.api.train` (the package and
the function share the name, so ``import geors.train.detector`` cannot hide
the function).
"""

from __future__ import annotations

import sys
import types


class _TrainPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """:func:`geors.train.api.train`: scenes and labels in, a model file out."""
        from geors.train.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
