"""SAM checkpoints: registry, resolution on disk, downloads, loading.

Checkpoints are looked up in this order (:func:`find_checkpoint`):

1. an explicit path given by the caller (``--sam PATH.pth`` or ``checkpoint=``);
2. the environment variable ``GEORS_SAM_CHECKPOINT`` (a file path);
3. the cache directory: ``$GEORS_CACHE_DIR/models/`` when ``GEORS_CACHE_DIR`` is
   set, else ``~/.cache/geors/models/``, under the official file name
   (e.g. ``sam_vit_b_01ec64.pth``).

:func:`download` streams the official file to a temporary file in the cache
directory, checks its sha256 against the value recorded here and renames it
into place atomically, so an interrupted download never leaves a file under
the final name.

:func:`load_sam` reads a checkpoint once (to CPU, ``weights_only``) and builds
the model:

- an official state dict: the architecture is inferred from the tensor shapes
  (encoder embedding width 768/1024/1280 -> vit_b/vit_l/vit_h) and built with
  ``segment_anything.sam_model_registry[kind]()``, then the state dict is
  loaded strictly. (geors loads the file itself rather than passing
  ``checkpoint=path`` to the registry so that a checkpoint saved on a GPU loads
  on a CPU-only machine and the file is read only once.)
- a geors checkpoint ``{"geors_sam_config": {...}, "state_dict": {...}}``: a SAM
  of a custom (e.g. tiny) configuration built by :func:`build_sam_from_config`
  from the same segment-anything architecture classes. Tests use this to load a
  tiny random SAM through the same code path users hit.
- ``vit_t`` (MobileSAM): built with ``mobile_sam.sam_model_registry["vit_t"]``
  when the ``mobile_sam`` package is installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from geors import paths
from geors.errors import DependencyNotFoundError, DownloadError, ModelError, require

__all__ = [
    "SamCheckpoint",
    "SAM_CHECKPOINTS",
    "cache_dir",
    "checkpoint_entry",
    "find_checkpoint",
    "download",
    "load_sam",
    "build_sam_from_config",
    "save_sam_checkpoint",
]

log = logging.getLogger(__name__)

ENV_CHECKPOINT = "GEORS_SAM_CHECKPOINT"
ENV_CACHE = paths.ENV_CACHE


@dataclass(frozen=True)
class SamCheckpoint:
    """One published SAM checkpoint.

    Attributes:
        kind: architecture key (``vit_b``, ``vit_l``, ``vit_h``, ``vit_t``).
        filename: official file name, also the name in the cache directory.
        url: official download URL.
        sha256: hex digest of the official file.
        size: size in bytes of the official file.
        package: the Python package that builds this architecture.
    """

    kind: str
    filename: str
    url: str
    sha256: str
    size: int
    package: str = "segment_anything"

    @property
    def name(self) -> str:
        """The name used by ``geors models`` (``sam-vit_b``...)."""
        return f"sam-{self.kind}"


# sha256 and sizes as published alongside these files by several independent
# projects that pin them (checked through code search; they agree).
SAM_CHECKPOINTS: dict[str, SamCheckpoint] = {
    "vit_b": SamCheckpoint(
        "vit_b",
        "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383,
    ),
    "vit_l": SamCheckpoint(
        "vit_l",
        "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        1_249_524_607,
    ),
    "vit_h": SamCheckpoint(
        "vit_h",
        "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879,
    ),
    "vit_t": SamCheckpoint(
        "vit_t",
        "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        40_728_226,
        package="mobile_sam",
    ),
}

# encoder embedding width -> official architecture
_EMBED_TO_KIND = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def cache_dir() -> Path:
    """Directory where downloaded model files live (not created here): ``<cache>/models``."""
    return paths.cache_dir("models")


def checkpoint_entry(kind: str) -> SamCheckpoint:
    """The official checkpoint of ``kind`` (``sam-vit_b``, ``vit_b``...); a :class:`ModelError` names the known ones."""
    key = kind.removeprefix("sam-").removeprefix("sam_")
    if key not in SAM_CHECKPOINTS:
        raise ModelError(
            f"unknown SAM model '{kind}'; known: {', '.join('sam-' + k for k in SAM_CHECKPOINTS)}"
        )
    return SAM_CHECKPOINTS[key]


def find_checkpoint(kind: str | None = "vit_b", path: str | os.PathLike | None = None) -> Path | None:
    """Locate a SAM checkpoint file, or return ``None`` when none is found.

    Args:
        kind: architecture (``vit_b``...) whose official file to look for in the
            cache directory; ``None`` to only consider ``path`` and the env var.
        path: explicit file path; when given it must exist.

    Raises:
        ModelError: ``path`` (or ``GEORS_SAM_CHECKPOINT``) names a missing file.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelError(f"SAM checkpoint '{p}' does not exist; check the path or omit it.")
        return p
    env = os.environ.get(ENV_CHECKPOINT)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelError(
                f"{ENV_CHECKPOINT}='{env}' does not name an existing file; fix or unset the variable."
            )
        return p
    if kind is None:
        return None
    p = cache_dir() / checkpoint_entry(kind).filename
    return p if p.is_file() else None


def missing_checkpoint_message(kind: str) -> str:
    """Message telling the user how to obtain the checkpoint of ``kind``."""
    e = checkpoint_entry(kind)
    return (
        f"no checkpoint found for SAM {e.kind}: looked for an explicit path, ${ENV_CHECKPOINT} "
        f"and {cache_dir() / e.filename}. Run 'geors models download {e.name}', or download "
        f"{e.url} by hand and put it at {cache_dir() / e.filename} (or pass its path with --sam PATH)."
    )


def download(
    name: str,
    dest_dir: str | os.PathLike | None = None,
    *,
    timeout: float = 30.0,
    progress=None,
) -> Path:
    """Download an official SAM checkpoint into the cache directory.

    Streams to a temporary file beside the destination, verifies the sha256
    and renames atomically. An existing file with the right digest is kept.

    Args:
        name: ``sam-vit_b``, ``vit_b``, ... (see :data:`SAM_CHECKPOINTS`).
        dest_dir: target directory; default :func:`cache_dir`.
        timeout: socket timeout in seconds.
        progress: optional callable ``progress(bytes_done, bytes_total)``.

    Returns:
        Path of the verified file.

    Raises:
        DownloadError: offline, HTTP error, or checksum mismatch. The message
            says where to put a file downloaded by hand.
    """
    e = checkpoint_entry(name)
    dest_dir = Path(dest_dir) if dest_dir is not None else cache_dir()
    final = dest_dir / e.filename
    by_hand = f"Download {e.url} by hand (sha256 {e.sha256}) and save it as {final}."
    if final.is_file() and final.stat().st_size == e.size and paths.sha256_file(final) == e.sha256:
        log.info("%s already present at %s", e.name, final)
        return final
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create cache directory {dest_dir}: {exc}. {by_hand}") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{e.filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(e.url, timeout=timeout) as resp:
                    total = int(resp.headers.get("Content-Length") or e.size)
                    while True:
                        block = resp.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                raise DownloadError(
                    f"could not download {e.name} from {e.url}: {exc}. "
                    f"If this machine is offline, {by_hand[0].lower()}{by_hand[1:]}"
                ) from exc
        digest = h.hexdigest()
        if digest != e.sha256:
            raise DownloadError(
                f"checksum mismatch for {e.url}: got sha256 {digest} ({done} bytes), expected "
                f"{e.sha256} ({e.size} bytes). The file was discarded. {by_hand}"
            )
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("downloaded %s to %s", e.name, final)
    return final


# --------------------------------------------------------------------------- loading


def build_sam_from_config(config: dict[str, Any]):
    """Build a SAM of any size from segment-anything's architecture classes.

    Args:
        config: keys ``encoder_embed_dim``, ``encoder_depth``,
            ``encoder_num_heads``, ``encoder_global_attn_indexes`` (list),
            optional ``img_size`` (default 1024, must be a multiple of 16),
            ``prompt_embed_dim`` (256), ``window_size`` (14),
            ``decoder_mlp_dim`` (2048), ``decoder_depth`` (2),
            ``decoder_num_heads`` (8), ``iou_head_hidden_dim`` (256).

    Returns:
        An untrained ``segment_anything.modeling.Sam`` in eval mode.
    """
    require("segment_anything", "sam", "SAM masks")
    _check_sam_config(config)
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    try:
        img_size = int(config.get("img_size", 1024))
        prompt_dim = int(config.get("prompt_embed_dim", 256))
        patch = 16
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=int(config["encoder_depth"]),
                embed_dim=int(config["encoder_embed_dim"]),
                img_size=img_size,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=int(config["encoder_num_heads"]),
                patch_size=patch,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=tuple(config["encoder_global_attn_indexes"]),
                window_size=int(config.get("window_size", 14)),
                out_chans=prompt_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(img_size // patch, img_size // patch),
                input_image_size=(img_size, img_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=int(config.get("decoder_depth", 2)),
                    embedding_dim=prompt_dim,
                    mlp_dim=int(config.get("decoder_mlp_dim", 2048)),
                    num_heads=int(config.get("decoder_num_heads", 8)),
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=int(config.get("iou_head_hidden_dim", 256)),
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"invalid SAM configuration {config!r}: {exc}") from exc
    sam.eval()
    return sam


def save_sam_checkpoint(sam, config: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save a SAM built by :func:`build_sam_from_config` so :func:`load_sam` reads it back."""
    import torch

    path = Path(path)
    torch.save({"geors_sam_config": dict(config), "state_dict": sam.state_dict()}, path)
    return path


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # legacy (non-zip) serialisation cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _read_checkpoint(path: Path):
    """The tensors of a checkpoint, loaded without ever running code from the file (``weights_only``).

    Errors say what the file is not, never PyTorch's advice to retry with
    ``weights_only=False`` (which would run whatever the file contains).
    """
    import pickle

    try:
        return _torch_load(path)
    except FileNotFoundError:
        raise ModelError(f"SAM checkpoint '{path}' does not exist; check the path.") from None
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # a class or function the file wants to run
            raise ModelError(
                f"'{path}' is not a SAM checkpoint geors can load safely: it holds Python objects other than "
                "tensors, which geors never executes. Use an official checkpoint ('geors models download "
                "sam-vit_b') or one saved as a plain state dict.") from None
        raise ModelError(f"'{path}' is not a PyTorch checkpoint (unreadable pickle data). "
                         "Use an official SAM checkpoint: 'geors models download sam-vit_b'.") from None
    except Exception as exc:  # noqa: BLE001 - torch, zipfile, safetensors... each has its own errors for bad files
        what = "truncated" if isinstance(exc, EOFError) else "not a PyTorch checkpoint"
        raise ModelError(f"'{path}' is {what} ({type(exc).__name__}). Give --sam an official SAM checkpoint: "
                         "'geors models download sam-vit_b' (or check the file was fully downloaded).") from None


def _check_official(path: Path) -> None:
    """A file with an official checkpoint's name or size must be that file, byte for byte: a flipped bit in
    a 2.4 GiB file loads without an error and gives other masks. (The digest is remembered by
    :func:`geors.paths.sha256_file`; the run record reuses it.)"""
    try:
        size = path.stat().st_size
    except OSError:
        return
    for entry in SAM_CHECKPOINTS.values():
        if path.name != entry.filename and size != entry.size:
            continue
        digest = paths.sha256_file(path)
        if digest != entry.sha256:
            raise ModelError(
                f"'{path}' has the name or size of the official SAM {entry.kind} checkpoint but not its content "
                f"(sha256 {digest[:12]}..., expected {entry.sha256[:12]}...): the file is corrupt or incomplete. "
                f"Download it again: geors models download {entry.name}")


# Bounds of a geors SAM configuration (the official models: 1024 px, width 768-1280, depth 12-32): a crafted
# file cannot make geors allocate what no machine has (img_size 262144 asked for 32 GiB).
_SAM_CONFIG_BOUNDS = {"img_size": (64, 2048), "encoder_embed_dim": (16, 2048), "encoder_depth": (1, 64),
                      "encoder_num_heads": (1, 64), "prompt_embed_dim": (16, 1024), "window_size": (1, 64),
                      "decoder_mlp_dim": (16, 8192), "decoder_depth": (1, 16), "decoder_num_heads": (1, 64),
                      "iou_head_hidden_dim": (16, 4096)}


def _check_sam_config(config: Any) -> None:
    if not isinstance(config, dict):
        raise ModelError(f"invalid SAM configuration {config!r}: not a table of settings")
    for key, (lo, hi) in _SAM_CONFIG_BOUNDS.items():
        if key not in config:
            continue
        v = config[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ModelError(f"invalid SAM configuration: {key} = {v!r}, expected an integer from {lo} to {hi}")
    if config.get("img_size", 1024) % 16:
        raise ModelError(f"invalid SAM configuration: img_size = {config['img_size']!r} is not a multiple of 16")
    dim, heads = config.get("encoder_embed_dim"), config.get("encoder_num_heads")
    if isinstance(dim, int) and isinstance(heads, int) and dim % heads:
        raise ModelError(f"invalid SAM configuration: encoder_embed_dim {dim} is not a multiple of "
                         f"encoder_num_heads {heads}")
    idx = config.get("encoder_global_attn_indexes", [])
    depth = config.get("encoder_depth", 0)
    if not isinstance(idx, list | tuple) or not all(isinstance(i, int) and 0 <= i < depth for i in idx):
        raise ModelError(f"invalid SAM configuration: encoder_global_attn_indexes {idx!r} must be block numbers "
                         f"below encoder_depth {depth}")


def load_sam(path: str | os.PathLike, kind: str | None = None):
    """Load a SAM model from a checkpoint file (to CPU, eval mode).

    Args:
        path: checkpoint file (official ``.pth``, MobileSAM ``.pt`` or a geors
            checkpoint written by :func:`save_sam_checkpoint`).
        kind: ``vit_b``/``vit_l``/``vit_h``/``vit_t``; inferred from the
            tensors when ``None`` (official and geors checkpoints).

    Returns:
        ``(model, kind)`` where ``kind`` is the architecture name used for
        ``mask_method`` (``"custom"`` for a geors checkpoint of a custom size).

    Raises:
        ModelError: unreadable file or a state dict that fits no architecture.
        DependencyNotFoundError: segment-anything (or mobile_sam for vit_t)
            is not installed.
    """
    path = Path(path)
    _check_official(path)
    if kind == "vit_t":
        try:
            import mobile_sam as msam
        except ImportError as exc:
            raise DependencyNotFoundError(
                "SAM vit_t (MobileSAM) needs the 'mobile_sam' package, which is not installed. Install it "
                "with: pip install git+https://github.com/ChaoningZhang/MobileSAM.git (or use --sam vit_b)."
            ) from exc
        try:
            model = msam.sam_model_registry["vit_t"](checkpoint=None)
            model.load_state_dict(_read_checkpoint(path))
        except Exception as exc:  # noqa: BLE001 - any failure means a bad file here
            raise ModelError(f"'{path}' is not a MobileSAM checkpoint: {exc}") from exc
        model.eval()
        return model, "vit_t"
    sa = require("segment_anything", "sam", "SAM masks")
    obj = _read_checkpoint(path)
    if isinstance(obj, dict) and "geors_sam_config" in obj:
        try:
            model = build_sam_from_config(obj["geors_sam_config"])
        except ModelError as exc:
            raise ModelError(f"'{path}': {exc}") from None
        state = obj.get("state_dict", {})
        found = str(obj["geors_sam_config"].get("name", "custom"))
    elif isinstance(obj, dict):
        state = obj
        w = state.get("image_encoder.patch_embed.proj.weight")
        if kind is None:
            if w is None or int(w.shape[0]) not in _EMBED_TO_KIND:
                raise ModelError(
                    f"'{path}' is not a segment-anything checkpoint (no ViT-B/L/H image encoder found)."
                    " For MobileSAM use --sam vit_t."
                )
            kind = _EMBED_TO_KIND[int(w.shape[0])]
        if kind not in sa.sam_model_registry:
            raise ModelError(f"unknown SAM architecture '{kind}'")
        model = sa.sam_model_registry[kind](checkpoint=None)
        found = kind
    else:
        raise ModelError(f"'{path}' does not contain a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"'{path}' does not fit SAM {found}: {str(exc)[:300]}") from exc
    model.eval()
    return model, found
