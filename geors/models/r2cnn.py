"""R2-CNN: one network that gates tiles and detects tiny objects (Pang et al., TGRS 2019).

Shared Tiny-Net backbone + global attention block, then two branches:

* **classifier branch** (the gate): two conv-BN-ReLU blocks, global average
  pooling, 1x1 conv -> 2 logits (index 1 = "tile contains objects").
* **detector branch**: an RPN on the stride-8 map with square anchors (scales
  from k-means over the training boxes, see :mod:`geors.train.anchors`),
  trained with NWD-RKA (:func:`geors.assign.rank_assign`) or, for the
  ablation, the classic IoU matcher; then an R-FCN style second stage with
  position-sensitive RoI align (``torchvision.ops.ps_roi_align``, through :mod:`geors.models.ops`), K+1 class
  scores, class-agnostic box regression and an IoU 0.5 matcher.

Joint loss (μ = λ = 1 by default)::

    L = CE(gate) + μ · [tile has targets] · (L_rpn_obj + L_rpn_box + L_cls + λ · L_box)

The detector loss is computed only for tiles with targets, as in the paper.

**Empty crops as detector negatives (deviation from the paper, opt-in).** With
``empty_negatives = True`` crops without targets also enter the detector loss:
every anchor of such a crop is an RPN negative and every proposal a
second-stage background RoI (no box regression), sampled like the negatives
of a crop with targets. In the paper only the gate ever sees empty ground, so
nothing teaches the detector branch to stay quiet there; measured on the NEON
trees, detectors trained that way wrote 10-39 boxes per empty lake tile
without the gate (docs/detector-research.md). Default ``False``: older model files
load and train unchanged.

**Cheap gate (deviation from the paper).** With ``gate_input_scale = s > 1``
the gate branch does not read the full-resolution shared map: it reads the
same backbone (same weights) applied to the tile average-pooled by ``s``
(:meth:`R2CNN.gate_forward`). The paper runs the backbone once at full
resolution and feeds both branches from it; on a CPU the Tiny-Net backbone is
about 85% of the per-tile cost of gate + detector (measured with
``benchmarks/bench_models.py``), so skipping only the detector branch saves
little. At ``s = 4`` the gate pass costs about 1/16 of a full-resolution
backbone, and tiles that pass pay one extra full-resolution backbone pass.
Trees of 20-100 px at 0.1 m are 5-25 px after ×4 pooling, still visible to
the gate. Training then uses the gate loss on the pooled crop and the
detector loss on the full-resolution crop. ``s = 1`` (the dataclass
default, so older model files load unchanged) is the paper's shared pass.

Images are ``(B, C, H, W)`` float tensors in ``[0, 1]``; boxes are
``x1, y1, x2, y2`` in tile pixels. No I/O here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geors.assign import DEFAULT_NWD_C, rank_assign
from geors.models.matching import BELOW_LOW, BalancedSampler, IoUMatcher
from geors.models.ops import (
    BoxCoder,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    nms_top,
    ps_roi_align,
    remove_small_boxes,
)
from geors.models.tinynet import GlobalAttention, TinyNet, conv_bn_relu

__all__ = ["R2CNN", "R2CNNConfig", "Detections", "INFERENCE_FIELDS"]

ASSIGNERS = ("nwd_rka", "iou")

#: Settings used only at inference: a fine-tuned or re-saved model adopts today's defaults for them.
INFERENCE_FIELDS = ("pre_nms_test", "post_nms_test", "rpn_nms", "det_nms", "max_detections")


@dataclass
class R2CNNConfig:
    """Architecture and training-time arguments of :class:`R2CNN` (stored in model metadata).

    Sizes are in pixels of the input tile.
    """

    num_classes: int = 1
    in_channels: int = 3
    anchor_scales: list[float] = field(default_factory=lambda: [12.0, 18.0, 24.0, 32.0, 44.0, 64.0])
    assigner: str = "nwd_rka"
    nwd_c: float = DEFAULT_NWD_C
    rka_k: int = 2
    rka_neg_threshold: float = 0.3
    rpn_iou_fg: float = 0.7
    rpn_iou_bg: float = 0.3
    head_channels: int = 96
    ps_size: int = 7
    detector_loss_weight: float = 1.0  # μ
    box_loss_weight: float = 1.0  # λ
    rpn_batch: int = 256
    rpn_pos_fraction: float = 0.5
    roi_batch: int = 128
    roi_pos_fraction: float = 0.25
    roi_iou: float = 0.5
    # Training only: online hard example mining in the second stage (Shrivastava et al. 2016, in R2-CNN's
    # training recipe). 0 = off (the balanced sampler, roi_batch x roi_pos_fraction); n > 0 = every
    # proposal is scored, near-duplicates are removed by NMS at 0.7 on their loss and the n hardest RoIs
    # of each crop carry the loss. Defaults off so older model files load and train unchanged.
    roi_ohem: int = 0
    # Training only: crops without targets also enter the detector loss (all anchors RPN negatives, all
    # proposals background RoIs). False = the paper (detector loss only for crops with targets).
    empty_negatives: bool = False
    pre_nms_train: int = 2000
    post_nms_train: int = 512
    # Inference top-k: with 300 proposals after NMS (the previous default) the
    # weak RPN ranking capped the recall of the default model at 0.30 on the
    # held-out NEON images; 6000 / 1000 / 1000 lift it to 0.53 (docs/detector-research.md, recall ceiling).
    pre_nms_test: int = 6000
    post_nms_test: int = 1000
    rpn_nms: float = 0.7
    det_nms: float = 0.4
    max_detections: int = 1000
    gate_input_scale: int = 1  # 1 = paper (gate on the shared full-res map); s > 1 = gate on the tile pooled by s
    gate_pool: str = "avg"  # "avg" = paper (global average pooling); "topK" (e.g. "top3") = mean of the K highest locations

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> R2CNNConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**data)


@dataclass
class Detections:
    """Detections of one tile: boxes ``(N, 4)`` xyxy tile pixels, scores ``(N,)``, class ids ``(N,)`` (0-based)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def _smooth_l1(pred: Tensor, target: Tensor, beta: float = 1.0 / 9) -> Tensor:
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


class R2CNN(nn.Module):
    """R2-CNN gate + detector. See the module docstring.

    Args:
        config: architecture arguments; defaults if omitted.
    """

    def __init__(self, config: R2CNNConfig | None = None):
        super().__init__()
        cfg = config or R2CNNConfig()
        if cfg.assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {ASSIGNERS}, got {cfg.assigner!r}")
        if not cfg.anchor_scales:
            raise ValueError("anchor_scales must not be empty")
        if not (cfg.gate_pool == "avg" or (cfg.gate_pool.startswith("top") and cfg.gate_pool[3:].isdigit()
                                           and int(cfg.gate_pool[3:]) >= 1)):
            raise ValueError(f"gate_pool must be 'avg' or 'topK' (K >= 1), got {cfg.gate_pool!r}")
        if int(cfg.gate_input_scale) < 1:
            raise ValueError(f"gate_input_scale must be >= 1, got {cfg.gate_input_scale!r}")
        self.config = cfg
        self.backbone = TinyNet(cfg.in_channels)
        ch = self.backbone.out_channels
        self.attention = GlobalAttention(ch)
        self.stride = TinyNet.stride

        # Classifier branch (gate).
        self.gate_head = nn.Sequential(
            conv_bn_relu(ch, 64, stride=2), conv_bn_relu(64, 64, stride=2), nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 2, 1)
        )

        # Detector branch.
        hc = cfg.head_channels
        n_anchor = len(cfg.anchor_scales)
        p = cfg.ps_size
        self.det_conv = nn.Sequential(nn.Conv2d(ch, hc, 3, padding=1), nn.ReLU(inplace=True))
        self.rpn_conv = nn.Sequential(nn.Conv2d(hc, hc, 3, padding=1), nn.ReLU(inplace=True))
        self.rpn_cls = nn.Conv2d(hc, n_anchor, 1)
        self.rpn_reg = nn.Conv2d(hc, 4 * n_anchor, 1)
        self.ps_cls = nn.Conv2d(hc, (cfg.num_classes + 1) * p * p, 1)
        self.ps_reg = nn.Conv2d(hc, 4 * p * p, 1)
        for layer in (self.rpn_cls, self.rpn_reg, self.ps_cls, self.ps_reg):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

        self.rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.roi_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self._training_parts: dict[str, Any] | None = None
        self.register_buffer(
            "_scales", torch.tensor(cfg.anchor_scales, dtype=torch.float32), persistent=False
        )

    # ------------------------------------------------------------------ training helpers
    def _parts(self) -> dict[str, Any]:
        """Samplers and IoU matchers of training (:mod:`geors.models.matching`), built on first use."""
        if self._training_parts is None:
            cfg = self.config
            self._training_parts = {
                "rpn_sampler": BalancedSampler(cfg.rpn_batch, cfg.rpn_pos_fraction),
                "roi_sampler": BalancedSampler(cfg.roi_batch, cfg.roi_pos_fraction),
                "rpn_iou_matcher": IoUMatcher(cfg.rpn_iou_fg, cfg.rpn_iou_bg, keep_best=True),
                "roi_matcher": IoUMatcher(cfg.roi_iou, cfg.roi_iou, keep_best=False),
            }
        return self._training_parts

    @property
    def rpn_sampler(self):
        return self._parts()["rpn_sampler"]

    @property
    def roi_sampler(self):
        return self._parts()["roi_sampler"]

    @property
    def rpn_iou_matcher(self):
        return self._parts()["rpn_iou_matcher"]

    @property
    def roi_matcher(self):
        return self._parts()["roi_matcher"]

    # ------------------------------------------------------------------ shared
    def features(self, images: Tensor) -> Tensor:
        """Backbone + global attention: ``(B, C, H, W)`` -> stride-8 map ``(B, 48, H/8, W/8)``."""
        return self.attention(self.backbone(images))

    def gate_logits(self, feats: Tensor) -> Tensor:
        """Classifier branch on the shared map -> ``(B, 2)`` logits (index 1 = objects present).

        With ``gate_pool = "avg"`` (the paper) the head averages the map, so a
        tile whose objects cover a small part of it is diluted by the empty
        rest. With ``"topK"`` the final 1x1 conv is applied per location (the
        same weights: average pooling then a 1x1 conv equals the average of
        per-location logits) and the tile's evidence is the mean of the ``K``
        highest per-location object-vs-empty margins: "is there an object
        somewhere", which is what a gate asks. Returned as logits ``(0, margin)``.
        """
        pool = self.config.gate_pool
        if pool == "avg":
            return self.gate_head(feats).flatten(1)
        k = int(pool[3:])
        head = self.gate_head
        per_loc = head[3](head[1](head[0](feats)))  # (B, 2, h, w)
        margin = (per_loc[:, 1] - per_loc[:, 0]).flatten(1)
        top = margin.topk(min(k, margin.shape[1]), dim=1).values.mean(dim=1)
        return torch.stack([torch.zeros_like(top), top], dim=1)

    def gate_input(self, images: Tensor) -> Tensor:
        """Tiles as the gate sees them: average-pooled by ``config.gate_input_scale`` (unchanged at 1).

        Sizes that are not a multiple of the scale are pooled with ``ceil_mode``
        (the last row/column averages the pixels that exist).
        """
        s = int(self.config.gate_input_scale)
        if s == 1:
            return images
        return F.avg_pool2d(images, kernel_size=s, stride=s, ceil_mode=True)

    def gate_forward(self, images: Tensor) -> Tensor:
        """Gate logits ``(B, 2)`` from images: ``gate_logits(features(gate_input(images)))``.

        At ``gate_input_scale == 1`` this is the paper's classifier on the
        full-resolution shared map; a gated pipeline that also needs the
        detector should then reuse the features (see ``geors.detect.Detector``).
        """
        return self.gate_logits(self.features(self.gate_input(images)))

    def anchors(self, feat_h: int, feat_w: int, device: torch.device) -> Tensor:
        """Square anchors ``(feat_h * feat_w * S, 4)`` xyxy pixels, location-major, scale-minor.

        Anchor centres are the centres of the stride-8 cells, ``(j + 0.5) * 8``.
        """
        s = self.stride
        ys = (torch.arange(feat_h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(feat_w, device=device, dtype=torch.float32) + 0.5) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        half = self._scales.to(device).reshape(1, -1, 1) * 0.5
        offsets = torch.cat([-half, -half, half, half], dim=-1)
        return (centres + offsets).reshape(-1, 4)

    # ------------------------------------------------------------------ RPN
    def _rpn(self, det: Tensor) -> tuple[Tensor, Tensor]:
        b = det.shape[0]
        h = self.rpn_conv(det)
        obj = self.rpn_cls(h).permute(0, 2, 3, 1).reshape(b, -1)
        reg = self.rpn_reg(h).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return obj.float(), reg.float()

    def _proposals(
        self, obj: Tensor, reg: Tensor, anchors: Tensor, image_size: tuple[int, int], training: bool
    ) -> list[Tensor]:
        cfg = self.config
        pre = cfg.pre_nms_train if training else cfg.pre_nms_test
        post = cfg.post_nms_train if training else cfg.post_nms_test
        out = []
        for i in range(obj.shape[0]):
            scores = obj[i].detach()
            n = min(pre, scores.numel())
            top = scores.topk(n).indices
            boxes = self.rpn_coder.decode_single(reg[i, top].detach(), anchors[top])
            boxes = clip_boxes_to_image(boxes, image_size)
            sc = scores[top]
            keep = remove_small_boxes(boxes, 1.0)
            boxes, sc = boxes[keep], sc[keep]
            keep = nms_top(boxes, sc, cfg.rpn_nms, post)  # = nms(...)[:post], exactly, at a fraction of the cost
            out.append(boxes[keep])
        return out

    def _rpn_labels(self, gt: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.config
        if cfg.assigner == "nwd_rka":
            return rank_assign(gt, anchors, cfg.rka_k, cfg.rka_neg_threshold, cfg.nwd_c)
        if gt.shape[0] == 0:
            z = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
            return z, z - 1
        idx = self.rpn_iou_matcher(box_iou(gt, anchors))
        labels = torch.where(idx >= 0, 1, torch.where(idx == BELOW_LOW, 0, -1))
        matched = torch.where(idx >= 0, idx, -1)
        return labels.to(torch.int64), matched

    def _rpn_loss(self, obj: Tensor, reg: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        labels, matched_all = [], []
        for t in targets:
            lab, m = self._rpn_labels(t["boxes"], anchors)
            labels.append(lab)
            matched_all.append(m)
        pos_masks, neg_masks = self.rpn_sampler(labels)
        loss_obj = obj.new_zeros(())
        loss_box = obj.new_zeros(())
        n_sampled = 0
        for i, t in enumerate(targets):
            pos = pos_masks[i].bool()
            neg = neg_masks[i].bool()
            sampled = pos | neg
            n_sampled += int(sampled.sum())
            loss_obj = loss_obj + F.binary_cross_entropy_with_logits(
                obj[i][sampled], pos[sampled].float(), reduction="sum"
            )
            if pos.any():
                gt = t["boxes"][matched_all[i][pos]]
                target = self.rpn_coder.encode_single(gt, anchors[pos])
                loss_box = loss_box + _smooth_l1(reg[i][pos], target)
        denom = max(n_sampled, 1)
        return loss_obj / denom + loss_box / denom

    # ------------------------------------------------------------------ second stage
    def _roi_outputs(self, det: Tensor, rois: list[Tensor]) -> tuple[Tensor, Tensor]:
        cfg = self.config
        p = cfg.ps_size
        idx = torch.cat([torch.full((r.shape[0], 1), i, dtype=r.dtype, device=r.device) for i, r in enumerate(rois)])
        boxes = torch.cat([idx, torch.cat(rois)], dim=1)
        cls_maps = self.ps_cls(det).float()
        reg_maps = self.ps_reg(det).float()
        scale = 1.0 / self.stride
        cls = ps_roi_align(cls_maps, boxes, p, spatial_scale=scale, sampling_ratio=2).mean(dim=(2, 3))
        reg = ps_roi_align(reg_maps, boxes, p, spatial_scale=scale, sampling_ratio=2).mean(dim=(2, 3))
        return cls, reg

    def _roi_box_targets(self, gt: Tensor, matched: Tensor, rois: Tensor) -> Tensor:
        """Regression targets of ``rois`` towards ``gt[matched]``; zeros for a crop without targets."""
        if gt.shape[0] == 0:
            return rois.new_zeros((rois.shape[0], 4))
        return self.roi_coder.encode_single(gt[matched], rois)

    def _roi_loss(self, det: Tensor, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        rois, labels, box_t = [], [], []
        lab_list, matched_list = [], []
        for props, t in zip(proposals, targets, strict=True):
            gt = t["boxes"]
            props = torch.cat([props, gt])  # gt boxes guarantee positives early in training
            if gt.shape[0] == 0:  # a crop without targets: every proposal is background
                idx = torch.full((props.shape[0],), -1, dtype=torch.int64, device=props.device)
                lab = torch.zeros_like(idx)
            else:
                idx = self.roi_matcher(box_iou(gt, props))
                lab = torch.where(idx >= 0, t["labels"][idx.clamp(min=0)] + 1, torch.zeros_like(idx))
            rois.append(props)
            lab_list.append(lab)
            matched_list.append(idx.clamp(min=0))
        if self.config.roi_ohem > 0:
            return self._roi_loss_ohem(det, rois, lab_list, matched_list, targets)
        pos_masks, neg_masks = self.roi_sampler(lab_list)
        for i, t in enumerate(targets):
            keep = (pos_masks[i] | neg_masks[i]).bool()
            rois[i] = rois[i][keep]
            labels.append(lab_list[i][keep])
            box_t.append(self._roi_box_targets(t["boxes"], matched_list[i][keep], rois[i]))
        cls, reg = self._roi_outputs(det, rois)
        labels_t = torch.cat(labels)
        targets_t = torch.cat(box_t)
        loss_cls = F.cross_entropy(cls, labels_t)
        fg = labels_t > 0
        loss_box = _smooth_l1(reg[fg], targets_t[fg]) / max(labels_t.numel(), 1)
        return loss_cls, loss_box

    def _roi_loss_ohem(
        self, det: Tensor, rois: list[Tensor], lab_list: list[Tensor], matched_list: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        """Second-stage loss on the ``roi_ohem`` hardest RoIs of each crop (OHEM).

        Every RoI (proposals + ground truth) goes through the head; the per-RoI
        loss (cross-entropy + box smooth L1 for foreground) ranks them, NMS at
        IoU 0.7 on that ranking removes near-duplicates (as in the OHEM paper),
        and the ``roi_ohem`` hardest RoIs of each crop are averaged. The
        forward pass is shared, so only the selected RoIs receive gradients.
        """
        from geors.models.ops import nms

        box_t = [self._roi_box_targets(t["boxes"], m, r) for r, m, t in zip(rois, matched_list, targets, strict=True)]
        cls, reg = self._roi_outputs(det, rois)
        labels_t = torch.cat(lab_list)
        targets_t = torch.cat(box_t)
        fg = labels_t > 0
        l_cls = F.cross_entropy(cls, labels_t, reduction="none")
        l_box = torch.zeros_like(l_cls)
        if fg.any():
            l_box[fg] = F.smooth_l1_loss(reg[fg], targets_t[fg], beta=1.0 / 9, reduction="none").sum(dim=1)
        total = (l_cls + self.config.box_loss_weight * l_box).detach()
        chosen, start = [], 0
        for r in rois:
            n = r.shape[0]
            keep = nms(r.detach().float(), total[start : start + n], 0.7)[: self.config.roi_ohem]
            chosen.append(keep + start)
            start += n
        sel = torch.cat(chosen)
        loss_cls = l_cls[sel].mean()
        loss_box = l_box[sel].sum() / max(sel.numel(), 1)
        return loss_cls, loss_box

    # ------------------------------------------------------------------ API
    def compute_losses(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Joint R2-CNN loss for a batch.

        Args:
            images: ``(B, C, H, W)`` float in ``[0, 1]``.
            targets: per image ``{"boxes": (N, 4) xyxy px float, "labels": (N,) int64 0-based}``;
                ``N = 0`` for empty tiles.

        Returns:
            dict with ``gate``, ``rpn``, ``roi_cls``, ``roi_box`` and ``total``.

        With ``gate_input_scale > 1`` the gate loss is computed on the pooled
        crops and the detector loss on the full-resolution crops that have
        targets (the backbone runs at full resolution only for those). With
        ``empty_negatives`` every crop enters the detector loss (see the
        module docstring); a batch without any target then still trains the
        detector branch with negatives.
        """
        cfg = self.config
        has = torch.tensor([t["boxes"].shape[0] > 0 for t in targets], device=images.device)
        det_idx = torch.arange(len(targets), device=images.device) if cfg.empty_negatives \
            else torch.nonzero(has).flatten()
        if int(cfg.gate_input_scale) == 1:
            feats = self.features(images)
            gate = self.gate_logits(feats).float()
        else:
            gate = self.gate_forward(images).float()
            feats = self.features(images[det_idx]) if det_idx.numel() > 0 else None
        loss_gate = F.cross_entropy(gate, has.long())
        zero = gate.new_zeros(())
        losses = {"gate": loss_gate, "rpn": zero, "roi_cls": zero, "roi_box": zero}
        if det_idx.numel() > 0:
            det = self.det_conv(feats[det_idx] if int(cfg.gate_input_scale) == 1 else feats)
            det_targets = [targets[int(i)] for i in det_idx]
            obj, reg = self._rpn(det)
            anchors = self.anchors(det.shape[-2], det.shape[-1], det.device)
            losses["rpn"] = self._rpn_loss(obj, reg, anchors, det_targets)
            props = self._proposals(obj, reg, anchors, tuple(images.shape[-2:]), training=True)
            losses["roi_cls"], losses["roi_box"] = self._roi_loss(det, props, det_targets)
        det_loss = losses["rpn"] + losses["roi_cls"] + cfg.box_loss_weight * losses["roi_box"]
        losses["total"] = loss_gate + cfg.detector_loss_weight * det_loss
        return losses

    def detect_from_features(self, feats: Tensor, image_size: tuple[int, int], score_threshold: float = 0.05) -> list[Detections]:
        """Detector branch on precomputed shared features (so a gated pipeline computes the backbone once).

        Args:
            feats: output of :meth:`features`.
            image_size: ``(H, W)`` of the input tiles in pixels.
            score_threshold: minimum class probability kept.
        """
        cfg = self.config
        det = self.det_conv(feats)
        obj, reg = self._rpn(det)
        anchors = self.anchors(det.shape[-2], det.shape[-1], det.device)
        props = self._proposals(obj, reg, anchors, image_size, training=False)
        cls, breg = self._roi_outputs(det, props)
        probs = cls.softmax(dim=1)
        out: list[Detections] = []
        start = 0
        k = cfg.num_classes
        for pr in props:
            n = pr.shape[0]
            p = probs[start : start + n]
            boxes = clip_boxes_to_image(self.roi_coder.decode_single(breg[start : start + n], pr), image_size)
            start += n
            scores = p[:, 1:].reshape(-1)
            labels = torch.arange(k, device=p.device).repeat(n)
            boxes = boxes.repeat_interleave(k, dim=0)
            keep = torch.nonzero(scores >= score_threshold).flatten()  # "at least", as written and evaluated
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, 1.0)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, cfg.det_nms)[: cfg.max_detections]
            out.append(Detections(boxes[keep], scores[keep], labels[keep]))
        return out

    def forward(self, images: Tensor, score_threshold: float = 0.05) -> tuple[Tensor, list[Detections]]:
        """Inference on every tile: gate logits ``(B, 2)`` and detections per tile.

        At ``gate_input_scale > 1`` the gate reads the pooled tiles (see :meth:`gate_forward`).
        """
        feats = self.features(images)
        gate = self.gate_logits(feats) if int(self.config.gate_input_scale) == 1 else self.gate_forward(images)
        return gate, self.detect_from_features(feats, tuple(images.shape[-2:]), score_threshold)
