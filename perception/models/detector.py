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
    """

    def __init__(self, lidar: Optional[nn.Module], camera: Optional[nn.Module], radar: Optional[nn.Module],
                 fusion: nn.Module, head: nn.Module):
        super().__init__()
        self.lidar, self.camera, self.radar = lidar, camera, radar
        self.fusion = fusion
        self.head = head

    @property
    def modalities(self) -> List[str]:
        return [name for name, enc in (("lidar", self.lidar), ("camera", self.camera), ("radar", self.radar))
                if enc is not None]

    def encode(self, batch: Batch) -> torch.Tensor:
        """The fused BEV map float[B, C, H, W] of a batch."""
        present = batch.modality_mask.clone().bool()
        feats: List[Optional[torch.Tensor]] = [None, None, None]
        if self.lidar is not None:
            feats[0] = self.lidar(batch.lidar_points)
        if self.camera is not None:
            feats[1] = self.camera(batch.images, batch.intrinsics, batch.img_aug, batch.T_ego_from_cam,
                                   batch.camera_mask)
        if self.radar is not None:
            feats[2] = self.radar(batch.radar_points)
        for m, f in enumerate(feats):
            if f is None:
                present[:, m] = False
        return self.fusion(feats, present)

    def forward(self, batch: Batch) -> List[Dict[str, torch.Tensor]]:
        return self.head(self.encode(batch), batch.ego_velocity)

    def loss(self, batch: Batch) -> Dict[str, torch.Tensor]:
        """Loss terms (weighted) and 'total' against the batch's ground truth."""
        if batch.gt_boxes is None:
            raise ValueError("loss() needs a batch with ground truth (gt_boxes is None)")
        preds = self(batch)
        targets = self.head.targets(batch.gt_boxes, batch.gt_labels, batch.gt_attributes)
        return self.head.loss(preds, targets)

    @torch.no_grad()
    def predict(self, batch: Batch) -> List[Detections]:
        """Detections per sample, ego frame at each sample's reference time."""
        return self.head.decode(self(batch), batch.sample_tokens, batch.timestamps)
