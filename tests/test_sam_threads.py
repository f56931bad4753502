"""Regression: one SAM engine shared by worker threads decoded one tile's boxes on another tile's image.

The embedding used to live on the predictor between ``set_image`` and decoding.
Barriers in the tiny SAM's forward passes make the interleaving that broke it
happen every time: both threads finish embedding their own image before either
decodes.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("segment_anything")

from geors import sam_weights  # noqa: E402
from geors.masks import SamEngine  # noqa: E402
from tests.test_sam import TINY, tiny_sam  # noqa: E402


def test_two_threads_share_one_sam_engine_without_mixing_images():
    engine = SamEngine(tiny_sam(seed=3), "tiny", device="cpu", clip_margin=None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8),
              np.ascontiguousarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)[::-1])]
    boxes = np.array([[20, 30, 120, 140], [100, 100, 200, 230]], float)
    reference = [[c.mask.copy() for c in engine.predict_crops(img, boxes)] for img in images]
    assert not all((a == b).all() for a, b in zip(*reference, strict=True))  # the images give other masks

    barrier = threading.Barrier(2, timeout=30)
    prompt = engine.predictor.model.prompt_encoder
    original = prompt.forward

    def synchronised(*a, **k):  # both threads have embedded their image before either decodes
        barrier.wait()
        return original(*a, **k)

    prompt.forward = synchronised
    results: dict[int, list] = {}
    errors = []

    def work(k):
        try:
            results[k] = [c.mask for c in engine.predict_crops(images[k], boxes)]
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for k in (0, 1):
        for got, want in zip(results[k], reference[k], strict=True):
            assert (got == want).all(), f"thread {k} decoded on the other thread's image"


def test_sam_checkpoint_sha256_is_recorded(tmp_path):
    """Regression: the run record had no sha256 of the mask engine's checkpoint."""
    import hashlib

    from geors.masks import make_mask_engine
    from geors.stages import mask_engine_info

    ckpt = sam_weights.save_sam_checkpoint(tiny_sam(), TINY, tmp_path / "tiny.pth")
    info = mask_engine_info(make_mask_engine(str(ckpt), device="cpu"))
    assert info["mask_checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info["mask_method"] == "sam:tiny"


def test_unsafe_or_foreign_checkpoints_get_a_clear_refusal(tmp_path):
    """Regressions: a pickle payload was refused with PyTorch's advice to retry with weights_only=False
    (i.e. to run it); a non-checkpoint said only '...: 101.'."""
    import os

    import torch

    from geors.errors import ModelError
    from geors.masks import make_mask_engine

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(ModelError) as exc:
        make_mask_engine(str(evil), device="cpu")
    msg = str(exc.value)
    assert "not a SAM checkpoint geors can load safely" in msg and "weights_only" not in msg
    assert not marker.exists()
    junk = tmp_path / "notckpt.pth"
    junk.write_bytes(b"hello, this is not a checkpoint")
    with pytest.raises(ModelError, match="notckpt.pth' is not a PyTorch checkpoint"):
        make_mask_engine(str(junk), device="cpu")
