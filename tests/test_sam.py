"""SAM engine with a tiny random SAM loaded through the user code path; checkpoint resolution and downloads."""

from __future__ import annotations

import hashlib
import io
import urllib.error

import numpy as np
import pytest
import torch
from shapely.geometry import box as sbox

pytest.importorskip("segment_anything")

from geors import sam_weights  # noqa: E402
from geors.errors import DownloadError, ModelError  # noqa: E402
from geors.masks import FALLBACK, SamEngine, instances_for_tile, make_mask_engine  # noqa: E402
from tests.mask_scenes import transform, write_disc_scene  # noqa: E402

TINY = dict(name="tiny", img_size=256, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
            encoder_global_attn_indexes=[1], window_size=8, prompt_embed_dim=32, decoder_mlp_dim=64,
            decoder_num_heads=2, iou_head_hidden_dim=32)


def tiny_sam(seed: int = 0, force: float | None = None):
    """A tiny random SAM; ``force`` = +1/-1 makes every mask logit positive/negative (all-on/all-off masks)."""
    torch.manual_seed(seed)
    sam = sam_weights.build_sam_from_config(TINY)
    if force is not None:
        with torch.no_grad():
            up = sam.mask_decoder.output_upscaling[-2]  # last ConvTranspose2d, then GELU
            up.weight.zero_()
            up.bias.fill_(1.0)  # upscaled embedding = GELU(1) > 0 everywhere
            for mlp in sam.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.zero_()
                mlp.layers[-1].bias.fill_(force)  # logit = force * 4 * GELU(1)
    return sam


@pytest.fixture
def tiny_ckpt(tmp_path):
    return sam_weights.save_sam_checkpoint(tiny_sam(), TINY, tmp_path / "tiny_sam.pth")


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GEORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GEORS_SAM_CHECKPOINT", raising=False)


def test_tiny_sam_matches_segment_anything_predictor(tiny_ckpt):
    from segment_anything import SamPredictor

    eng = make_mask_engine(str(tiny_ckpt), device="cpu", clip_margin=None, batch_size=2)
    assert isinstance(eng, SamEngine) and eng.method == "sam:tiny"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 100, 90], [200, 150, 260, 290.5], [0, 0, 500, 300], [400, 10, 420, 30],
                      [33, 44, 55, 66]], float)
    masks, scores = eng.predict(img, boxes)  # 3 decoder batches of <= 2 boxes, one embedding
    ref = SamPredictor(eng.predictor.model)
    ref.set_image(img)
    tb = ref.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float32), ref.original_size)
    ref_masks, ref_iou, _ = ref.predict_torch(None, None, boxes=tb, multimask_output=False)
    assert masks.shape == (5, 300, 500)
    assert (masks == ref_masks[:, 0].numpy()).all()
    np.testing.assert_allclose(scores, ref_iou[:, 0].numpy(), atol=1e-5)


def test_embedding_computed_once_per_image(tiny_ckpt, monkeypatch):
    eng = make_mask_engine(str(tiny_ckpt), device="cpu", batch_size=4)
    calls = []
    enc = eng.predictor.model.image_encoder
    orig = enc.forward
    monkeypatch.setattr(enc, "forward", lambda x: calls.append(x.shape) or orig(x))
    img = np.zeros((200, 300, 3), np.uint8)
    boxes = np.tile([[10, 10, 50, 50]], (10, 1)).astype(float)
    eng.predict(img, boxes)
    assert calls == [(1, 3, 256, 256)]


def test_masks_clipped_to_dilated_box_and_world_coordinates(tmp_path):
    path = sam_weights.save_sam_checkpoint(tiny_sam(force=1.0), TINY, tmp_path / "on.pth")
    eng = make_mask_engine(str(path), device="cpu")  # default clip_margin 0.1
    img = np.zeros((300, 400, 3), np.uint8)
    boxes = np.array([[100, 50, 200, 150], [0, 0, 10, 40], [390, 290, 400, 300]], float)
    masks, scores = eng.predict(img, boxes)
    # an all-on SAM mask clipped to the box dilated by max(2 px, 10 % of the longer side)
    exp = np.zeros_like(masks)
    exp[0, 40:160, 90:210] = True
    exp[1, 0:44, 0:14] = True
    exp[2, 288:300, 388:400] = True
    assert (masks == exp).all()
    assert scores.dtype == np.float32

    from geors.raster import open_scene
    from geors.results import Detection
    from geors.tiling import TileGrid

    scene_path, _ = write_disc_scene(tmp_path / "discs.tif")
    scene = open_scene(scene_path)
    tile = next(iter(TileGrid(scene, 256, 32)))  # the top-left tile
    sboxes = np.array([[100, 60, 160, 140], [200, 180, 250, 260]], float)  # 2nd crosses the tile edge
    dets = [Detection(None, "disc", 0, 0.9, box_px=tuple(b - [tile.col_off, tile.row_off] * 2)) for b in sboxes]
    res = instances_for_tile(scene, tile, scene.read_tile(tile), dets, eng, simplify_px=0)
    t = transform()
    for r, b in zip(res, sboxes, strict=True):
        m = max(2.0, 0.1 * max(b[2] - b[0], b[3] - b[1]))
        x0, y0 = t @ (b[0] - m, b[1] - m)
        x1, y1 = t @ (b[2] + m, b[3] + m)
        assert r.mask_method == "sam:tiny" and r.geometry.equals(sbox(x0, y1, x1, y0))


def test_all_off_masks_fall_back_to_the_box(tmp_path):
    path = sam_weights.save_sam_checkpoint(tiny_sam(force=-1.0), TINY, tmp_path / "off.pth")
    eng = make_mask_engine(str(path), device="cpu")
    (crop,) = eng.predict_crops(np.zeros((64, 64, 3), np.uint8), np.array([[5, 5, 30, 30]], float))
    assert crop.method == FALLBACK and crop.score == 0.0
    assert (crop.row_off, crop.col_off) == (5, 5) and crop.mask.shape == (25, 25) and crop.mask.all()


def test_checkpoint_resolution_order(tiny_ckpt, tmp_path, clean_env, monkeypatch):
    assert sam_weights.find_checkpoint("vit_b") is None
    cached = sam_weights.cache_dir() / "sam_vit_b_01ec64.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_ckpt.read_bytes())
    assert sam_weights.find_checkpoint("vit_b") == cached
    monkeypatch.setenv("GEORS_SAM_CHECKPOINT", str(tiny_ckpt))
    assert sam_weights.find_checkpoint("vit_b") == tiny_ckpt
    assert sam_weights.find_checkpoint("vit_b", path=cached) == cached  # explicit path wins
    assert make_mask_engine("auto", device="cpu").method == "sam:tiny"  # auto picks SAM when one is found
    monkeypatch.setenv("GEORS_SAM_CHECKPOINT", str(tmp_path / "missing.pth"))
    with pytest.raises(ModelError, match="GEORS_SAM_CHECKPOINT"):
        sam_weights.find_checkpoint("vit_b")


def test_not_a_sam_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(ModelError, match="not a segment-anything checkpoint"):
        make_mask_engine(str(bad), device="cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="is not a PyTorch checkpoint"):
        make_mask_engine(str(junk), device="cpu")


@pytest.mark.slow
def test_official_vit_b_layout_loads_through_registry(tmp_path, clean_env, monkeypatch):
    """A state dict of the official ViT-B layout (random weights) is recognised and built with sam_model_registry."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    eng = make_mask_engine("vit_b", device="cpu", checkpoint=path)
    assert eng.method == "sam:vit_b" and eng.predictor.model.image_encoder.img_size == 1024


# ------------------------------------------------------------------ downloads


class _Resp(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_offline_raises_with_instructions(tmp_path, clean_env, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sam_weights.urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError) as exc:
        sam_weights.download("sam-vit_b")
    msg = str(exc.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg
    assert str(sam_weights.cache_dir() / "sam_vit_b_01ec64.pth") in msg and "by hand" in msg
    assert list(sam_weights.cache_dir().iterdir()) == []  # no partial file left
    assert isinstance(exc.value, OSError)


def test_download_checks_sha256_and_renames(tmp_path, clean_env, monkeypatch):
    payload = b"fake checkpoint bytes" * 100
    entry = sam_weights.SamCheckpoint("vit_b", "sam_vit_b_01ec64.pth", "https://example.invalid/x.pth",
                                      hashlib.sha256(payload).hexdigest(), len(payload))
    monkeypatch.setitem(sam_weights.SAM_CHECKPOINTS, "vit_b", entry)
    monkeypatch.setattr(sam_weights.urllib.request, "urlopen", lambda *a, **k: _Resp(payload))
    seen = []
    path = sam_weights.download("vit_b", progress=lambda d, t: seen.append(d))
    assert path.read_bytes() == payload and seen[-1] == len(payload)
    assert [p.name for p in path.parent.iterdir()] == ["sam_vit_b_01ec64.pth"]
    # corrupted transfer: checksum mismatch, nothing left behind, existing good file untouched
    monkeypatch.setattr(sam_weights.urllib.request, "urlopen", lambda *a, **k: _Resp(b"evil" + payload[4:]))
    path.unlink()
    with pytest.raises(DownloadError, match="checksum mismatch"):
        sam_weights.download("vit_b")
    assert list(path.parent.iterdir()) == []


def test_models_cli(tmp_path, clean_env, monkeypatch):
    import json

    from click.testing import CliRunner

    from geors.cli.main import main

    r = CliRunner().invoke(main, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    names = {row["name"] for row in json.loads(r.output)}
    assert {"sam-vit_b", "sam-vit_l", "sam-vit_h", "sam-vit_t"} <= names
    r = CliRunner().invoke(main, ["models", "info", "sam-vit_h"])
    assert r.exit_code == 0 and json.loads(r.output)["sha256"].startswith("a7bf3b02")
    monkeypatch.setattr(sam_weights.urllib.request, "urlopen",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    r = CliRunner().invoke(main, ["models", "download", "sam-vit_b"])
    assert r.exit_code == 2 and "by hand" in r.output
    r = CliRunner().invoke(main, ["models", "info", "nope"])
    assert r.exit_code == 2
