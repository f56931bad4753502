"""The scenes and files the trials read, written once into the work folder: mosaics of the NEON OSBS_029
sample (a synthetic texture when it is absent), a changed and a copied scene, bad TOMLs, a huge VRT, altered
detector files, tiny SAM checkpoints, and vectors made from a finished run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

NEON = Path.home() / ".cache/geors/samples/neon/OSBS_029.tif"


def write_tif(path: Path, data, nodata=None, res=0.1, tiled=False):
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS

    prof = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype.name,
                crs=CRS.from_epsg(32617), transform=Affine(res, 0, 404000.0, 0, -res, 3285000.0), interleave="pixel")
    if nodata is not None:
        prof["nodata"] = nodata
    if tiled:
        prof.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    return path


def base_image():
    import numpy as np

    if NEON.exists():
        import rasterio

        with rasterio.open(NEON) as ds:
            a = ds.read()[:3]
        a[a == 255] = 254  # the sample's nodata is 255; keep every pixel valid
        return a
    rng = np.random.default_rng(0)  # a texture with bright discs, when the sample is absent
    a = rng.integers(40, 90, size=(3, 400, 400), dtype=np.uint8)
    yy, xx = np.mgrid[:400, :400]
    for cy, cx in rng.integers(20, 380, size=(40, 2)):
        a[:, (yy - cy) ** 2 + (xx - cx) ** 2 < 150] = 200
    return a


def mosaic(a, n: int):
    import numpy as np

    flips = [a, a[:, :, ::-1], a[:, ::-1, :], a[:, ::-1, ::-1]]
    rows_ = [np.concatenate([flips[(i + j) % 4] for j in range(n)], axis=2) for i in range(n)]
    return np.ascontiguousarray(np.concatenate(rows_, axis=1))


class Assets:
    """Everything the trials read, written once into the work folder."""

    def __init__(self, work: Path, quick: bool):
        import numpy as np

        self.work = work
        a = base_image()
        s800 = mosaic(a, 2)
        write_tif(work / "s800.tif", s800)  # striped, uncompressed: the first 64 KiB are header + top rows
        changed = s800.copy()
        changed[:, 400:, :] = changed[:, 400:, ::-1]  # bottom half mirrored
        (work / "changed").mkdir()
        write_tif(work / "changed/s800.tif", changed)
        one, two = (work / "s800.tif").read_bytes(), (work / "changed/s800.tif").read_bytes()
        assert len(one) == len(two) and one[:65536] == two[:65536] and one != two, "changed raster not as meant"
        (work / "copy").mkdir()
        shutil.copy(work / "s800.tif", work / "copy/s800.tif")
        write_tif(work / "s1200.tif", mosaic(a, 3), tiled=True)  # 36 tiles: signals and kills
        write_tif(work / "other.tif", np.ascontiguousarray(a[:, ::-1, :]))  # a second scene (1 tile)
        write_tif(work / "nodata.tif", np.zeros((3, 512, 512), np.uint8), nodata=0)
        (work / "fake.tif").write_text("not a raster\n")
        (work / "notgpkg.gpkg").write_text("my notes, not a GeoPackage\n")
        (work / "comments.txt").write_text("# the archive\n\n# nothing yet\n")
        (work / "missing_list.txt").write_text("other.tif\ngone.tif\n")
        (work / "bin.toml").write_bytes(bytes(range(256)) * 4)
        self._tomls()
        self._vrt()
        self._models(quick)

    def _tomls(self):
        w = self.work
        bad = {
            "t_overwrite_str.toml": '[output]\noverwrite = "false"\n',
            "t_resume_str.toml": '[output]\nresume = "yes"\n',
            "t_use_gate_str.toml": '[detect]\nuse_gate = "no"\n',
            "t_bands_bool.toml": "[tiling]\nbands = [true, 2, 3]\n",
            "t_threads_bool.toml": "[execution]\nthreads = true\n",
            "t_segmenter_int.toml": "[segment]\nsegmenter = 5\n",
            "t_tile_size_str.toml": '[tiling]\ntile_size = "256"\n',
            "t_simplify_str.toml": '[masks]\nsimplify_px = "lots"\n',
            "t_unknown_key.toml": "[tiling]\ntile_sise = 256\n",
            "t_not_toml.toml": "[tiling\ntile_size = 256\n",
        }
        for name, text in bad.items():
            (w / name).write_text(text)
        (w / "simplify15.toml").write_text("[masks]\nsimplify_px = 1.5\n")

    def _vrt(self):
        bands = "".join(
            f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">other.tif'
            f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>" for b in (1, 2, 3))
        (self.work / "huge.vrt").write_text(
            '<VRTDataset rasterXSize="2000000000" rasterYSize="2000000000"><SRS>EPSG:32617</SRS>'
            f"<GeoTransform>400000, 0.1, 0, 3000000, 0, -0.1</GeoTransform>{bands}</VRTDataset>")

    def _models(self, quick: bool):
        import torch
        from safetensors import safe_open
        from safetensors.torch import save_file

        from geors.models.registry import get_model, weights_sha256

        w = self.work
        det = Path(get_model(None))
        self.detector = det
        self.segmenter = Path(get_model("c2fnet-neon-dota"))
        with safe_open(str(det), "pt") as fh:
            header = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(header["geors"])

        def save(name, state_, **changes):
            m = dict(meta, **changes)
            m["weights_sha256"] = weights_sha256(state_)
            save_file(state_, str(w / name), metadata={**header, "geors": json.dumps(m, sort_keys=True)})

        other = dict(state)
        k = next(k for k, v in state.items() if v.dtype.is_floating_point and v.numel() > 100)
        other[k] = state[k] + 1e-3 * torch.randn_like(state[k], generator=torch.Generator().manual_seed(1))
        save("other_detector.safetensors", other)
        save("classes_empty.safetensors", state, classes=[])
        save("tile0.safetensors", state, tile_size=0)
        (w / "trunc.safetensors").write_bytes(self.segmenter.read_bytes()[:100_000])
        self.has_sam = False
        try:
            from geors import sam_weights

            tiny = dict(name="tiny", img_size=256, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                        encoder_global_attn_indexes=[1], window_size=8, prompt_embed_dim=32, decoder_mlp_dim=64,
                        decoder_num_heads=2, iou_head_hidden_dim=32)
            for seed, name in ((0, "tinyA.pth"), (1, "tinyB.pth")):
                torch.manual_seed(seed)
                sam_weights.save_sam_checkpoint(sam_weights.build_sam_from_config(tiny), tiny, w / name)
            torch.save({"geors_sam_config": dict(tiny, img_size=262144), "state_dict": {}}, w / "evil.pth")
            (w / sam_weights.SAM_CHECKPOINTS["vit_b"].filename).write_bytes(b"not the official bytes")
            self.fake_official = sam_weights.SAM_CHECKPOINTS["vit_b"].filename
            self.has_sam = True
        except Exception as exc:  # noqa: BLE001 - segment-anything missing: the SAM trials are left out
            print(f"(SAM trials left out: {exc})", file=sys.stderr)

    def vectors(self, detections_gpkg: Path):
        """Boxes (with a user attribute), closed LineStrings and Points made from a finished run's detections."""
        import pyogrio
        import shapely

        df = pyogrio.read_dataframe(detections_gpkg, layer="detections")
        df = df[["class", "score", "geometry"]].copy()
        df["myid"] = [f"box{i}" for i in range(len(df))]
        pyogrio.write_dataframe(df, self.work / "boxes.gpkg", layer="boxes")
        lines = df.copy()
        lines["geometry"] = shapely.boundary(df.geometry.values)  # closed LineStrings
        pyogrio.write_dataframe(lines, self.work / "lines.gpkg", layer="lines")
        pts = df.copy()
        pts["geometry"] = shapely.centroid(df.geometry.values)
        pyogrio.write_dataframe(pts, self.work / "points.gpkg", layer="points")
