"""The fusion detector: one code path for every sensor combination.

Encoders (each optional, chosen by the config) map their modality to the one fused BEV grid,
``[B, C, H, W]``; the cross-attention fusion combines what is present per sample (absent sensors are
masked, not zero-filled into a collapse); the CenterPoint head predicts and decodes boxes.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from ..structures import Batch, Detections


class FusionDetector(nn.Module):
    """lidar / camera / radar: encoders or None (modality not used by this model)
    fusion: CrossAttentionFusion; head: CenterHead
    decoder: BEV decoder between the fusion and the head (SECONDFPN at stride 1) or None
    depth_loss_weight: weight of the camera's LiDAR-supervised depth loss (training only; 0 = none)
    """

    def __init__(self, lidar: Optional[nn.Module], camera: Optional[nn.Module], radar: Optional[nn.Module],
                 fusion: nn.Module, head: nn.Module, depth_loss_weight: float = 0.0,
                 decoder: Optional[nn.Module] = None):
        super().__init__()
        self.lidar, self.camera, self.radar = lidar, camera, radar
        self.depth_loss_weight = float(depth_loss_weight) if camera is not None else 0.0
        self.fusion = fusion
        self.decoder = decoder
        self.head = head

    @property
    def modalities(self) -> List[str]:
        return [name for name, enc in (("lidar", self.lidar), ("camera", self.camera), ("radar", self.radar))
                if enc is not None]

    def encode(self, batch: Batch, return_depth: bool = False):
        """The fused (and decoded) BEV map float[B, C, H, W] of a batch (and the camera's CameraDepth, or None, with
        ``return_depth``)."""
        present = batch.modality_mask.clone().bool()
        feats: List[Optional[torch.Tensor]] = [None, None, None]
        depth = None
        if self.lidar is not None:
            feats[0] = self.lidar(batch.lidar_points)
        if self.camera is not None:
            feats[1], depth = self.camera(batch.images, batch.intrinsics, batch.img_aug, batch.T_ego_from_cam,
                                          batch.camera_mask, return_depth=True)
        if self.radar is not None:
            feats[2] = self.radar(batch.radar_points)
        for m, f in enumerate(feats):
            if f is None:
                present[:, m] = False
        fused = self.fusion(feats, present)
        if self.decoder is not None:
            fused = self.decoder(fused)
        return (fused, depth) if return_depth else fused

    def forward(self, batch: Batch, return_depth: bool = False):
        """The head's maps per task (and the camera's CameraDepth, or None, with ``return_depth``)."""
        if return_depth:
            fused, depth = self.encode(batch, return_depth=True)
            return self.head(fused, batch.ego_velocity), depth
        return self.head(self.encode(batch), batch.ego_velocity)

    def add_depth_terms(self, terms: Dict[str, torch.Tensor], depth, batch: Batch,
                        reduction: str = "sample") -> Dict[str, torch.Tensor]:
        """``terms`` with the weighted depth loss as 'depth', added to 'total', when the model is
        depth-supervised (see models.camera.depth); cells without a LiDAR point take no loss."""
        if self.depth_loss_weight <= 0:
            return terms
        if depth is None or batch.depth_targets is None:
            # no camera in the batch: the term is still reported (0), so every DDP rank reduces the
            # same list of terms
            value = batch.ego_velocity.new_zeros(())
        else:
            from .camera.depth import depth_loss

            value = self.depth_loss_weight * depth_loss(depth, batch.depth_targets, self.camera.depth_bins,
                                                        batch.batch_size, reduction)
        return {**terms, "depth": value, "total": terms["total"] + value}

    def loss(self, batch: Batch) -> Dict[str, torch.Tensor]:
        """Loss terms (weighted) and 'total' against the batch's ground truth (the head's terms over the
        whole batch, plus the camera's depth term)."""
        if batch.gt_boxes is None:
            raise ValueError("loss() needs a batch with ground truth (gt_boxes is None)")
        preds, depth = self(batch, return_depth=True)
        targets = (batch.targets if batch.targets is not None  # built by the training loader's workers
                   else self.head.targets(batch.gt_boxes, batch.gt_labels, batch.gt_attributes))
        return self.add_depth_terms(self.head.loss(preds, targets), depth, batch, "batch")

    # precision of predict / predict_with_depth: "fp32", or "bf16" / "fp16" (autocast, maps decoded in
    # float32); see perception.deploy.precision
    precision: str = "fp32"

    def _precision(self):
        from ..deploy.precision import autocast

        params = next(self.parameters(), None)
        return autocast(self.precision, params.device if params is not None else "cpu")

    @torch.no_grad()
    def predict(self, batch: Batch) -> List[Detections]:
        if self.precision == "fp32":
            return self.head.decode(self(batch), batch.sample_tokens, batch.timestamps)
        from ..deploy.precision import float_maps

        with self._precision():
            preds = self(batch)
        return self.head.decode(float_maps(preds), batch.sample_tokens, batch.timestamps)

    @torch.no_grad()
    def predict_with_depth(self, batch: Batch):
        """(detections per sample, CameraDepth or None): inference plus what the depth metrics need."""
        if self.precision == "fp32":
            preds, depth = self(batch, return_depth=True)
            return self.head.decode(preds, batch.sample_tokens, batch.timestamps), depth
        from ..deploy.precision import float_maps

        with self._precision():
            preds, depth = self(batch, return_depth=True)
        if depth is not None:
            depth.logits = depth.logits.float()
        return self.head.decode(float_maps(preds), batch.sample_tokens, batch.timestamps), depth
