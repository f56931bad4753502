"""Model files: safetensors weights with geors metadata, and the built-in model names.

A geors model file is one ``.safetensors`` file. Its header metadata holds a
JSON document under the key ``"geors"``::

    {"format": "geors-model", "format_version": 1,
     "architecture": "r2cnn", "arch_args": {...R2CNNConfig...},
     "classes": ["tree"], "bands": 3,
     "normalisation": {"method": "percentile_stretch", "percentiles": [2, 98], "scope": "scene", "range": [0, 1]},
     "tile_size": 640, "overlap": 128, "gsd_m": 0.1,
     "anchor_scales": [...], "nwd_c": 12.7,
     "training": {...}, "geors_version": "0.1.0",
     "weights_sha256": "<sha256 over tensor names, dtypes, shapes and bytes>"}

Loading never unpickles anything: safetensors only stores raw tensors. The
weights hash detects edits to the tensors after saving; a file without the
geors key (a foreign safetensors file), a truncated file or one whose tensors do
not fit the declared architecture raises :class:`geors.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geors.errors import ModelError
from geors.paths import sha256_file

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "save_model",
    "load_model",
    "read_metadata",
    "get_model",
    "list_models",
    "weights_sha256",
    "file_sha256",
]

FORMAT = "geors-model"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"

BUILTIN_MODELS: dict[str, str] = {
    "r2cnn-neon-trees": "r2cnn_neon_trees.safetensors",
    "c2fnet-neon-dota": "c2fnet_neon_dota.safetensors",  # segmenter (geors.segment.DEFAULT_SEGMENTER)
}
"""Built-in models shipped in ``geors/models/weights/`` (name -> file name): detector/gate and segmenter."""

DEFAULT_MODEL = "r2cnn-neon-trees"

#: What the shipped files' metadata lacks or spells differently, applied when they are read (the files and
#: their sha256 stay as shipped). ``input_dtype``: the data type of the imagery the model was trained on;
#: ``gsd_m`` / ``gsd_range_m``: its ground sampling distance; the segmenter's ``Tree`` is spelt ``tree`` as
#: the detector's class, so one object class has one name in every layer and legend.
BUILTIN_METADATA: dict[str, dict[str, Any]] = {
    "r2cnn_neon_trees.safetensors": {"input_dtype": "uint8"},
    "c2fnet_neon_dota.safetensors": {"input_dtype": "uint8", "gsd_m": None, "gsd_range_m": [0.1, 0.27],
                                     "rename_classes": {"Tree": "tree"}},
}

#: A scene whose GSD differs from the model's by more than this factor is warned about.
GSD_TOLERANCE = 1.5

_REQUIRED = ("architecture", "arch_args", "classes", "bands", "tile_size")


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


file_sha256 = sha256_file  # the one sha256 rule (geors.paths); kept as the registry's name


def _build(meta: dict[str, Any]) -> nn.Module:
    arch = meta["architecture"]
    if arch == "r2cnn":
        from geors.models.r2cnn import R2CNN, R2CNNConfig

        return R2CNN(R2CNNConfig.from_dict(meta["arch_args"]))
    if arch == "c2fnet":
        from geors.models.c2fnet import C2FNet, C2FNetConfig

        return C2FNet(C2FNetConfig.from_dict(meta["arch_args"]))
    raise ValueError(f"unknown architecture {arch!r}")


def save_model(model: nn.Module, meta: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``model``'s weights and ``meta`` to one safetensors file.

    ``format``, ``format_version``, ``geors_version`` and ``weights_sha256``
    are filled in; ``architecture``/``arch_args`` default to the model's own.

    Args:
        model: an :class:`geors.models.r2cnn.R2CNN` (any module with a
            ``config.to_dict()`` if ``arch_args`` is not given).
        meta: metadata, see the module docstring; must be JSON-serialisable.
        path: output file; ``.safetensors`` is the recommended suffix.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    from geors import __version__

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = dict(meta)
    if "arch_args" not in full and hasattr(model, "config"):
        full["arch_args"] = model.config.to_dict()
    full.setdefault("architecture", "r2cnn")
    full.update(
        format=FORMAT, format_version=FORMAT_VERSION, geors_version=__version__, weights_sha256=weights_sha256(state)
    )
    missing = [k for k in _REQUIRED if k not in full]
    if missing:
        raise ValueError(f"model metadata lacks {missing}")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"geors": json.dumps(full, sort_keys=True)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # safetensors writes 0600; a model file is shared like any other file
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a geors model file, without loading the weights.

    Raises:
        ModelError: missing, corrupt or foreign file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found. Pass a model file or a built-in name ({', '.join(BUILTIN_MODELS)}).")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types on bad headers
        raise ModelError(
            f"{path}: not a readable safetensors model file ({exc}). The file is corrupt or truncated; "
            "download or train it again."
        ) from None
    return _parse_meta(path, header)


def _parse_meta(path: Path, header: dict[str, str]) -> dict[str, Any]:
    if "geors" not in header:
        raise ModelError(
            f"{path}: a safetensors file without geors metadata (a model from another tool?). "
            "geors loads only models saved by geors (geors train ... -o MODEL)."
        )
    try:
        meta = json.loads(header["geors"])
    except json.JSONDecodeError:
        raise ModelError(f"{path}: the geors metadata is not valid JSON; the file was edited or is corrupt.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path}: metadata does not declare format {FORMAT!r}; not a geors model file.")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(
            f"{path}: model format version {meta.get('format_version')} is newer than this geors supports "
            f"({FORMAT_VERSION}); upgrade geors."
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelError(f"{path}: model metadata lacks {missing}; the file is incomplete or was edited.")
    fix = BUILTIN_METADATA.get(path.name) if path.parent.resolve() == WEIGHTS_DIR.resolve() else None
    if fix:
        fix = dict(fix)
        rename = fix.pop("rename_classes", {})
        meta = {**meta, **fix}
        if rename:
            meta["classes"] = [rename.get(c, c) for c in meta["classes"]]
            for key in ("small_classes",):
                if isinstance(meta.get(key), list):
                    meta[key] = [rename.get(c, c) for c in meta[key]]
            if meta.get("background") in rename:
                meta["background"] = rename[meta["background"]]
    return meta


def get_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """Resolve a built-in model name or a path to a model file.

    Args:
        name_or_path: built-in name (see :data:`BUILTIN_MODELS`), a file path,
            or None for :data:`DEFAULT_MODEL`.

    Raises:
        ModelError: unknown name / missing file.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    key = str(name_or_path)
    if key in BUILTIN_MODELS:
        path = WEIGHTS_DIR / BUILTIN_MODELS[key]
        if not path.is_file():
            raise ModelError(
                f"built-in model {key!r} is missing from the installation ({path}). Reinstall geors or "
                "pass --model PATH."
            )
        return path
    path = Path(key).expanduser()
    if path.is_file():
        return path
    raise ModelError(
        f"{key}: neither a model file nor a built-in model name. Built-in models: {', '.join(BUILTIN_MODELS)}; "
        "`geors models list` shows them."
    )


def load_model(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a model (eval mode) and its metadata.

    Args:
        name_or_path: built-in name, file path, or None for the default model.
        device: torch device for the weights.

    Returns:
        ``(model, meta)``; ``meta`` also carries ``path`` and ``file_sha256``.

    Raises:
        ModelError: unknown name, missing/corrupt/foreign/tampered file, or
            tensors that do not fit the declared architecture.
    """
    from safetensors import safe_open

    path = get_model(name_or_path)
    meta = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as exc:
        raise ModelError(f"{path}: tensor data unreadable ({exc}); the file is corrupt or truncated.") from None
    if meta.get("weights_sha256") != weights_sha256(state):
        raise ModelError(
            f"{path}: weights do not match the checksum stored in the file: it was modified after saving "
            "or is corrupt. Use the original model file."
        )
    try:
        model = _build(meta)
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{path}: weights do not fit architecture {meta.get('architecture')!r} ({exc}).") from None
    model.eval().to(device)
    meta = dict(meta, path=str(path), file_sha256=file_sha256(path))
    return model, meta


def fit_warnings(scene, meta: dict[str, Any], what: str = "model") -> list[str]:
    """What does not fit between a scene and a model's training imagery, one sentence each (empty = fits).

    Checked: one band replicated into a model of 3 bands (it runs, on grey pixels the model never saw), the
    data type (``input_dtype``) and the GSD (``gsd_m`` or ``gsd_range_m``, :data:`GSD_TOLERANCE`). A band
    count that cannot be fed is refused elsewhere (``BandError``), before any output exists.
    """
    name = meta.get("name") or Path(str(meta.get("path", what))).stem
    out = []
    bands = int(meta.get("bands", 0) or 0)
    if len(getattr(scene, "band_indexes", ())) == 1 and bands == 3:
        out.append(f"{scene.path}: one band, repeated into the 3 bands {what} {name} was trained on (colour "
                   "imagery); expect weaker results, or train a model on this imagery")
    want = meta.get("input_dtype")
    if want and getattr(scene, "dtype", None) and str(scene.dtype) != str(want):
        out.append(f"{scene.path}: {scene.dtype} pixels, {what} {name} was trained on {want} imagery; geors "
                   "stretches every scene to [0, 1] by its 2-98 percentiles, so this works only when the "
                   "values show the same kind of image (check with `geors preview`)")
    gsd = getattr(scene, "gsd_m", None)
    lo_hi = meta.get("gsd_range_m") or ([meta["gsd_m"]] * 2 if meta.get("gsd_m") else None)
    if gsd and lo_hi:
        lo, hi = float(lo_hi[0]), float(lo_hi[1])
        if gsd > hi * GSD_TOLERANCE or gsd < lo / GSD_TOLERANCE:
            trained = f"{lo:g} m" if lo == hi else f"{lo:g}-{hi:g} m"
            factor = gsd / hi if gsd > hi else lo / gsd
            size = "smaller" if gsd > hi else "larger"
            out.append(f"{scene.path}: {gsd:g} m pixels, {what} {name} was trained at {trained}: objects look "
                       f"{factor:.1f}x {size} than it learned them; resample the scene (e.g. gdalwarp -tr "
                       f"{lo:g} {lo:g}) or train a model at this resolution")
    return out


def fit_message(scene, meta: dict[str, Any], what: str = "model") -> str:
    """:func:`fit_warnings` as one log message, one line each."""
    return "\n".join(fit_warnings(scene, meta, what))


def list_models() -> list[dict[str, Any]]:
    """Built-in detector/gate models: name, path, whether installed, classes, tile size, sha256."""
    rows = []
    for name, fname in BUILTIN_MODELS.items():
        path = WEIGHTS_DIR / fname
        row: dict[str, Any] = {"name": name, "kind": "detector", "path": str(path), "installed": path.is_file()}
        if path.is_file():
            try:
                meta = read_metadata(path)
                row.update(
                    kind="segmenter" if meta.get("architecture") == "c2fnet" else "detector",
                    classes=meta.get("classes"),
                    bands=meta.get("bands"),
                    tile_size=meta.get("tile_size"),
                    gsd_m=meta.get("gsd_m"),
                    default=name == DEFAULT_MODEL,
                    sha256=file_sha256(path),
                )
            except ModelError as exc:
                row["error"] = str(exc)
        rows.append(row)
    return rows
