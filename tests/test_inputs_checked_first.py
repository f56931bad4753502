"""What can be checked is checked before the output exists (issue 26, finding 8): model and checkpoint files
that cannot work are one message, exit 2, no output file, no traceback."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from geors import sam_weights
from geors.cli.main import main
from geors.errors import ModelError
from geors.models.r2cnn import R2CNN, R2CNNConfig
from geors.models.registry import save_model

import scenes


def geors(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def detector_file(path, **meta):
    torch.manual_seed(0)
    base = {"classes": ["blob"], "bands": 3, "tile_size": 256, "overlap": 64, "gate_threshold": 0.0}
    return save_model(R2CNN(R2CNNConfig(num_classes=1, anchor_scales=[16.0, 32.0])), {**base, **meta}, path)


def refused(r, out, *words):
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    for w in words:
        assert w in r.output, r.output
    assert not out.exists()


def test_a_segmenter_given_as_model_is_refused_before_the_output(tmp_path):
    # regression: exit 1 after an AttributeError on every tile, with the output created
    from geors.models.c2fnet import C2FNet, C2FNetConfig

    seg = save_model(C2FNet(C2FNetConfig(num_classes=3, small_classes=(2,), window=32, window_stride=16,
                                         top_n=4)).eval(),
                     {"architecture": "c2fnet", "classes": ["bg", "tree", "car"], "bands": 3, "tile_size": 96,
                      "overlap": 32, "small_classes": ["car"]}, tmp_path / "seg.safetensors")
    scene = scenes.rgb_uint8(tmp_path / "s.tif", 300, 300)
    out = tmp_path / "o.gpkg"
    refused(geors("detect", scene, "-o", out, "--model", seg, "--device", "cpu"), out, str(seg), "--segmenter")


@pytest.mark.parametrize("meta,words", [
    ({"classes": []}, ["classes: []"]),
    ({"tile_size": 0}, ["tile_size 0", "--tile"]),
])
def test_model_metadata_that_cannot_work_is_refused_naming_the_file(tmp_path, meta, words):
    # regression: classes [] failed on every tile (exit 1, output created); tile_size 0 said "tile size must
    # be an integer >= 16 pixels, got 0" without naming the model file
    model = detector_file(tmp_path / "m.safetensors", **meta)
    scene = scenes.rgb_uint8(tmp_path / "s.tif", 300, 300)
    out = tmp_path / "o.gpkg"
    refused(geors("detect", scene, "-o", out, "--model", model, "--device", "cpu"), out, str(model), *words)


@pytest.fixture()
def boxes(tmp_path):
    import geopandas as gpd
    import shapely

    path = tmp_path / "b.gpkg"
    gpd.GeoDataFrame({"c": ["a"]}, geometry=[shapely.box(404010, 3284990, 404020, 3284999)],
                     crs="EPSG:32617").to_file(path)
    return path


def test_a_truncated_safetensors_as_sam_is_one_message(tmp_path, boxes):
    # regression: a SafetensorError traceback
    pytest.importorskip("segment_anything")
    model = detector_file(tmp_path / "m.safetensors")
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(model.read_bytes()[:100_000])
    scene = scenes.rgb_uint8(tmp_path / "s.tif", 300, 300)
    out = tmp_path / "o.gpkg"
    refused(geors("masks", scene, "--boxes", boxes, "-o", out, "--sam", trunc), out, str(trunc), "--sam")


def test_a_crafted_sam_configuration_is_refused_before_allocating(tmp_path, boxes):
    # regression: img_size 262144 asked torch for a 32 GiB position embedding
    pytest.importorskip("segment_anything")
    cfg = dict(name="evil", img_size=262144, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
               encoder_global_attn_indexes=[1], window_size=8, prompt_embed_dim=32, decoder_mlp_dim=64,
               decoder_num_heads=2, iou_head_hidden_dim=32)
    ckpt = tmp_path / "evil.pth"
    torch.save({"geors_sam_config": cfg, "state_dict": {}}, ckpt)
    scene = scenes.rgb_uint8(tmp_path / "s.tif", 300, 300)
    out = tmp_path / "o.gpkg"
    refused(geors("masks", scene, "--boxes", boxes, "-o", out, "--sam", ckpt), out, str(ckpt),
            "img_size = 262144")


def test_a_file_posing_as_an_official_checkpoint_must_be_it(tmp_path):
    # regression: a bit-flipped official checkpoint loaded without a word (detector files are checksummed)
    pytest.importorskip("segment_anything")
    named = tmp_path / sam_weights.SAM_CHECKPOINTS["vit_b"].filename
    named.write_bytes(b"not the official bytes")
    with pytest.raises(ModelError, match="not its content"):
        sam_weights.load_sam(named)
    sized = tmp_path / "my_sam.pth"  # the official size, other bytes (a sparse file: no disk used)
    with open(sized, "wb") as fh:
        fh.truncate(sam_weights.SAM_CHECKPOINTS["vit_b"].size)
    with pytest.raises(ModelError, match="official SAM vit_b"):
        sam_weights.load_sam(sized)


def test_a_scene_whose_tile_plan_cannot_fit_in_memory_is_refused_first(tmp_path):
    # regression: a VRT of 2e9 x 2e9 px died with a MemoryError (traceback) after the output was created
    src = scenes.rgb_uint8(tmp_path / "s.tif", 300, 300)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">{src.name}'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="2000000000" rasterYSize="2000000000"><SRS>EPSG:32617</SRS>'
                   f"<GeoTransform>400000, 0.1, 0, 3000000, 0, -0.1</GeoTransform>{bands}</VRTDataset>")
    out = tmp_path / "o.gpkg"
    refused(geors("tiles", vrt, "-o", out), out, "huge.vrt", "tiles of 640 px", "Split the scene")


def test_a_list_file_of_comments_only_is_named(tmp_path):
    # regression: "no scene could be opened (no scene given)" without naming the list file
    lst = tmp_path / "scenes.txt"
    lst.write_text("# the archive\n\n# nothing yet\n")
    out = tmp_path / "o.gpkg"
    refused(geors("tiles", f"@{lst}", "-o", out), out, f"@{lst}: the list file names no scene")


def test_a_missing_scene_is_named_once(tmp_path):
    # regression: "missing.tif: missing.tif: file not found"
    missing = tmp_path / "missing.tif"
    out = tmp_path / "o.gpkg"
    r = geors("tiles", missing, "-o", out)
    refused(r, out, f"{missing}: file not found")
    assert r.output.count(str(missing)) == 1, r.output
