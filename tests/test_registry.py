import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from geors.detect import Detector
from geors.errors import BandError, ModelError
from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.models.registry import (
    BUILTIN_MODELS,
    get_model,
    list_models,
    load_model,
    read_metadata,
    save_model,
)

META = {"classes": ["blob"], "bands": 3, "tile_size": 128, "overlap": 32, "gsd_m": 0.1}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(1)
    model = R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0])).eval()
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save_model(model, META, path)
    return model, path


def test_round_trip_same_outputs_and_metadata(saved):
    model, path = saved
    loaded, meta = load_model(path, "cpu")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        g1, d1 = model(x, score_threshold=0.0)
        g2, d2 = loaded(x, score_threshold=0.0)
    assert torch.equal(g1, g2)
    for a, b in zip(d1, d2, strict=True):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    assert meta["classes"] == ["blob"] and meta["arch_args"]["anchor_scales"] == [8.0, 16.0]
    assert meta["format"] == "geors-model" and len(meta["weights_sha256"]) == 64 and len(meta["file_sha256"]) == 64


def test_corrupt_and_truncated_files(saved, tmp_path):
    _, path = saved
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="junk.safetensors"):
        load_model(junk)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(ModelError, match="cut.safetensors"):
        load_model(cut)


def test_foreign_safetensors_rejected(tmp_path):
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ModelError, match="without geors metadata"):
        load_model(foreign)


def test_tampered_weights_rejected(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data, after the header
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_model(bad)


def test_wrong_architecture_args_rejected(saved, tmp_path):
    # a consistent file whose metadata declares another architecture size
    model, _ = saved
    path = tmp_path / "mismatch.safetensors"
    save_model(model, dict(META, arch_args=dict(model.config.to_dict(), head_channels=32)), path)
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ModelError, match="neither a model file nor a built-in"):
        get_model(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelError, match="not found"):
        read_metadata(tmp_path / "nope.safetensors")


def test_builtin_default_model_loads():
    rows = {r["name"]: r for r in list_models()}
    assert set(rows) == set(BUILTIN_MODELS)
    if not all(r["installed"] for r in rows.values()):
        pytest.skip("default weights not built in this checkout")
    det = Detector.load(None, device="cpu")
    assert det.classes == ["tree"] and det.bands == 3 and det.tile_size == 640
    assert json.dumps(det.meta)  # metadata is plain JSON


def test_band_mismatch_is_band_error(saved):
    _, path = saved
    det = Detector.load(path, device="cpu")
    with pytest.raises(BandError, match="3-band"):
        det.gate(np.zeros((1, 4, 64, 64), np.float32))
    with pytest.raises(BandError):
        det.detect(np.zeros((1, 1, 64, 64), np.float32))


def test_detector_outputs(saved):
    _, path = saved
    det = Detector.load(path, device="cpu")
    imgs = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    p = det.gate(imgs)
    assert p.shape == (2,) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    res = det.detect(imgs, score_threshold=0.0)
    assert len(res) == 2
    boxes, scores, cls = res[0]
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and cls.dtype == np.int64
    probs, gated = det.gate_and_detect(imgs, gate_threshold=1.01)
    assert np.allclose(probs, p, atol=1e-6) and all(len(b) == 0 for b, _, _ in gated)


def test_model_files_get_a_normal_files_mode(tmp_path):
    """Issue 26.6: safetensors writes 0600; a model file is shared like any other file (0666 less the umask)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = save_model(R2CNN(R2CNNConfig(anchor_scales=[8.0, 16.0])), META, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
