"""Mask engines from CLI-style specs (``vit_b``, a checkpoint path, ``grabcut``, ``box``, ``auto``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from geors.errors import ConfigError, ModelError
from geors.masks.base import MaskEngine
from geors.masks.box_engine import BoxEngine
from geors.masks.grabcut import GrabCutEngine
from geors.masks.sam import SAM_KINDS, SamEngine
from geors.masks.watershed import WatershedEngine

__all__ = ["make_mask_engine"]

log = logging.getLogger(__name__)

_told_no_sam = False


def make_mask_engine(spec: str = "auto", device: str = "auto", checkpoint: str | os.PathLike | None = None,
                     **options) -> MaskEngine:
    """Build a mask engine from a CLI-style spec.

    Args:
        spec: ``vit_b`` | ``vit_l`` | ``vit_h`` | ``vit_t`` | a checkpoint path
            (``.pth``/``.pt``) | ``watershed`` | ``grabcut`` | ``box`` |
            ``auto``. ``auto`` means SAM vit_b when a checkpoint is found
            (explicit ``checkpoint``, ``$GEORS_SAM_CHECKPOINT`` or the cache
            directory), else the weight-free :class:`WatershedEngine` (it
            beat the box and GrabCut on real vehicle outlines, and keeps the
            box where its mask is implausible), announced once with a logged
            warning that says how to get SAM. ``sam-vit_b`` style names are
            accepted too.
        device: ``auto``, ``cpu`` or ``cuda``.
        checkpoint: explicit checkpoint path for the SAM kinds.
        **options: passed to the engine (e.g. ``batch_size``, ``clip_margin``,
            ``bf16`` for SAM; ``iterations`` for GrabCut); options the chosen
            engine does not take are ignored when ``auto`` falls back.

    Every returned engine gives each :class:`MaskCrop` its own ``method``
    (``sam:vit_b``, ``watershed``, ``grabcut``, ``box``, or ``box:fallback``
    when the engine kept the box for that object), which
    :func:`instances_for_tile` writes to ``Instance.mask_method``: count
    ``mask_method == "box:fallback"`` for the number of fallbacks.

    Raises:
        ModelError: a SAM kind was asked for but no checkpoint was found (the
            message says how to download it) or the file is not a SAM.
        ConfigError: unknown spec.
    """
    from geors import sam_weights

    s = str(spec).strip()
    key = s.lower().removeprefix("sam:").removeprefix("sam-")
    if key == "box":
        return BoxEngine()
    if key == "grabcut":
        return GrabCutEngine(**options)
    if key == "watershed":
        return WatershedEngine(**options)
    if key == "auto":
        path = sam_weights.find_checkpoint("vit_b", checkpoint)
        if path is None:
            global _told_no_sam
            if not _told_no_sam:  # once per process, however many engines are built
                _told_no_sam = True
                log.warning(
                    "no SAM checkpoint found: instances will be refined without SAM (weight-free watershed "
                    "outlines; the box where an outline is implausible, mask_method 'box:fallback'). For SAM "
                    "masks run 'geors models download sam-vit_b' or set %s to a checkpoint file.",
                    sam_weights.ENV_CHECKPOINT,
                )
            return WatershedEngine(**{k: v for k, v in options.items() if k in WatershedEngine.OPTIONS})
        model, kind = sam_weights.load_sam(path)
        return SamEngine(model, kind, device=device, checkpoint=path, **options)
    if key in SAM_KINDS:
        path = sam_weights.find_checkpoint(key, checkpoint)
        if path is None:
            raise ModelError(sam_weights.missing_checkpoint_message(key))
        model, kind = sam_weights.load_sam(path, kind="vit_t" if key == "vit_t" else None)
        if kind in sam_weights.SAM_CHECKPOINTS and kind != key:
            log.warning("checkpoint %s holds SAM %s, not %s as requested; using it as %s", path, kind, key, kind)
        return SamEngine(model, kind, device=device, checkpoint=path, **options)
    p = Path(s).expanduser()
    if p.suffix.lower() in (".pth", ".pt") or p.exists():
        if not p.is_file():
            raise ModelError(f"--sam: SAM checkpoint '{p}' does not exist; check the path or pass another "
                             "engine (vit_b, watershed, box, ...).")
        kind_hint = "vit_t" if p.name == sam_weights.SAM_CHECKPOINTS["vit_t"].filename else None
        model, kind = sam_weights.load_sam(p, kind=kind_hint)
        return SamEngine(model, kind, device=device, checkpoint=p, **options)
    raise ConfigError(
        f"unknown mask engine '{spec}'; use one of vit_b, vit_l, vit_h, vit_t, a .pth checkpoint path, "
        "watershed, grabcut, box or auto"
    )
