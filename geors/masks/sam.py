"""Segment Anything prompted with boxes: one image embedding per image, boxes decoded in batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geors.masks.base import FALLBACK, MaskEngine, box_crop, check_image
from geors.masks.prompts import MaskCrop, as_boxes, clip_window

__all__ = ["SamBoxPredictor", "SamEmbedding", "SamEngine", "SAM_KINDS"]

SAM_KINDS = ("vit_b", "vit_l", "vit_h", "vit_t")


@dataclass(frozen=True)
class SamEmbedding:
    """One image's SAM embedding and the sizes needed to map boxes and masks."""

    features: object  # torch.Tensor (1, C, h, w)
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamBoxPredictor:
    """Box-prompted SAM inference: embed an image once, decode many boxes in batches.

    A thin wrapper over a ``segment_anything`` ``Sam`` (or MobileSAM) model
    using ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` directly,
    like ``SamPredictor.predict_torch`` but with batching and cropping built in.

    Args:
        model: a ``Sam`` module.
        device: ``"cpu"``, ``"cuda"``...
        batch_size: boxes decoded per mask-decoder call.
        autocast_dtype: e.g. ``torch.bfloat16`` to run under autocast on GPU;
            None for float32.
    """

    def __init__(self, model, device: str = "cpu", batch_size: int = 32, autocast_dtype=None):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = int(batch_size)
        self.autocast_dtype = autocast_dtype
        self.transform = ResizeLongestSide(model.image_encoder.img_size)

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=self.autocast_dtype)

    def embed(self, image_rgb8: np.ndarray) -> SamEmbedding:
        """Compute the image embedding (the expensive encoder) once.

        The embedding is returned, not kept on the predictor, so several threads
        can share one predictor (and one model) without decoding one tile's boxes
        on another tile's image.

        Args:
            image_rgb8: (H, W, 3) uint8 RGB, any size; resized so the longer
                side is the encoder input size (1024 for official models).
        """
        import torch

        check_image(image_rgb8)
        original_size = (int(image_rgb8.shape[0]), int(image_rgb8.shape[1]))
        resized = self.transform.apply_image(image_rgb8)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        with torch.inference_mode(), self._autocast():
            features = self.model.image_encoder(self.model.preprocess(x.float()))
        return SamEmbedding(features, original_size, (int(x.shape[-2]), int(x.shape[-1])))

    def predict_boxes(
        self, embedding: SamEmbedding, boxes_xyxy: np.ndarray, clip_margin: float | None = 0.1
    ) -> list[MaskCrop]:
        """Decode boxes against an image embedding from :meth:`embed`.

        Args:
            embedding: the image's embedding.
            boxes_xyxy: (N, 4) float pixel boxes in the original image frame.
            clip_margin: masks are cut to the box dilated by
                ``max(2 px, clip_margin * longer box side)``; None keeps the
                whole mask (cropped to its bounding box).

        Returns:
            N :class:`MaskCrop`; score = SAM's predicted IoU.
        """
        import torch

        boxes = as_boxes(boxes_xyxy)
        h, w = embedding.original_size
        out: list[MaskCrop] = []
        for s in range(0, len(boxes), self.batch_size):
            b = boxes[s : s + self.batch_size]
            tb = torch.as_tensor(self.transform.apply_boxes(b, embedding.original_size), dtype=torch.float32,
                                 device=self.device)
            with torch.inference_mode(), self._autocast():
                sparse, dense = self.model.prompt_encoder(points=None, boxes=tb, masks=None)
                low_res, iou = self.model.mask_decoder(
                    image_embeddings=embedding.features,
                    image_pe=self.model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
                masks = self.model.postprocess_masks(low_res.float(), embedding.input_size, embedding.original_size)
            masks = (masks[:, 0] > self.model.mask_threshold).cpu().numpy()
            scores = iou[:, 0].float().cpu().numpy()
            for k, box in enumerate(b):
                m = masks[k]
                if clip_margin is not None:
                    side = max(box[2] - box[0], box[3] - box[1])
                    c0, r0, c1, r1 = clip_window(box, w, h, max(2.0, clip_margin * side))
                else:
                    rows, cols = np.nonzero(m)
                    if rows.size:
                        c0, r0, c1, r1 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
                    else:
                        c0 = r0 = c1 = r1 = 0
                out.append(MaskCrop(m[r0:r1, c0:c1].copy(), int(r0), int(c0), float(scores[k])))
        return out


class SamEngine(MaskEngine):
    """Segment Anything prompted with boxes (see module docstring).

    Args:
        model: a loaded ``Sam`` module (see :func:`geors.sam_weights.load_sam`).
        kind: architecture name for ``method`` (``vit_b``...).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_size: boxes per decoder call.
        clip_margin: see :meth:`SamBoxPredictor.predict_boxes`.
        bf16: run under bfloat16 autocast (GPU only).
        checkpoint: the file the weights came from (its sha256 goes into the run record).
    """

    def __init__(self, model, kind: str, device: str = "auto", batch_size: int = 32,
                 clip_margin: float | None = 0.1, bf16: bool = False, checkpoint=None):
        import torch

        from geors.device import resolve_device

        self.device = str(resolve_device(device))
        dtype = torch.bfloat16 if (bf16 and self.device.startswith("cuda")) else None
        self.predictor = SamBoxPredictor(model, self.device, batch_size, dtype)
        self.kind = kind
        self.method = f"sam:{kind}"
        self.clip_margin = clip_margin
        self.checkpoint = checkpoint

    def predict_crops(self, image_rgb8: np.ndarray, boxes_xyxy: np.ndarray) -> list[MaskCrop]:
        boxes = as_boxes(boxes_xyxy)
        if len(boxes) == 0:
            return []
        embedding = self.predictor.embed(image_rgb8)  # local: no state shared between threads
        crops = self.predictor.predict_boxes(embedding, boxes, clip_margin=self.clip_margin)
        h, w = image_rgb8.shape[:2]
        for k, c in enumerate(crops):
            if c.mask.any():
                c.method = self.method
            else:  # SAM found nothing in the box: the box is still an answer
                crops[k] = box_crop(boxes[k], w, h, 0.0, FALLBACK)
        return crops
