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
    camera_aux_head: a second CenterHead on the camera's own BEV map (training only; None = none), its
        localization loss weighted by ``aux_head_weight``: without it the fused head finds what it
        needs in the LiDAR and radar, and the camera branch gets too little gradient to learn to see
    """

    # the auxiliary head's terms: where objects are and their boxes; a single frame of images says
    # nothing about velocity, and attributes are the fused head's job
    AUX_TERMS = ("heatmap", "offset", "height", "size", "yaw")

    def __init__(self, lidar: Optional[nn.Module], camera: Optional[nn.Module], radar: Optional[nn.Module],
                 fusion: nn.Module, head: nn.Module, depth_loss_weight: float = 0.0,
                 decoder: Optional[nn.Module] = None, camera_aux_head: Optional[nn.Module] = None,
                 aux_head_weight: float = 0.0, aux_detach_depth: bool = False):
        super().__init__()
        self.lidar, self.camera, self.radar = lidar, camera, radar
        self.depth_loss_weight = float(depth_loss_weight) if camera is not None else 0.0
        self.fusion = fusion
        self.decoder = decoder
        self.head = head
        self.camera_aux_head = camera_aux_head if camera is not None else None
        self.aux_head_weight = float(aux_head_weight) if self.camera_aux_head is not None else 0.0
        # the auxiliary head reads a lift with the depth detached (see CameraEncoderConfig.aux_detach_depth)
        self.aux_detach_depth = bool(aux_detach_depth) and self.camera_aux_head is not None

    @property
    def modalities(self) -> List[str]:
        return [name for name, enc in (("lidar", self.lidar), ("camera", self.camera), ("radar", self.radar))
                if enc is not None]

    def encode(self, batch: Batch, return_depth: bool = False, return_camera_bev: bool = False):
        """The fused (and decoded) BEV map float[B, C, H, W] of a batch (and the camera's CameraDepth, or None, with
        ``return_depth``; and the camera's own BEV map float[B, C, H, W], or None, with ``return_camera_bev``)."""
        present = batch.modality_mask.clone().bool()
        feats: List[Optional[torch.Tensor]] = [None, None, None]
        depth = None
        if self.lidar is not None:
            feats[0] = self.lidar(batch.lidar_points)
        camera_bev = None
        if self.camera is not None:
            detached = return_camera_bev and self.aux_detach_depth
            res = self.camera(batch.images, batch.intrinsics, batch.img_aug, batch.T_ego_from_cam, batch.camera_mask,
                              return_depth=True, detached_depth_map=detached)
            feats[1], depth = res[0], res[1]
            camera_bev = res[2] if detached else feats[1]
        if self.radar is not None:
            feats[2] = self.radar(batch.radar_points)
        for m, f in enumerate(feats):
            if f is None:
                present[:, m] = False
        fused = self.fusion(feats, present)
        if self.decoder is not None:
            fused = self.decoder(fused)
        out = (fused,) + ((depth,) if return_depth else ()) + ((camera_bev,) if return_camera_bev else ())
        return out if len(out) > 1 else fused

    def forward(self, batch: Batch, return_depth: bool = False, return_aux: bool = False):
        """The head's maps per task (and the camera's CameraDepth, or None, with ``return_depth``; and, with
        ``return_aux``, the auxiliary camera head's maps per task, or None when the model has none).

        The auxiliary head runs inside forward so that a DDP wrapper sees its parameters used."""
        if return_aux:
            fused, depth, cam_bev = self.encode(batch, return_depth=True, return_camera_bev=True)
            aux = None
            if self.camera_aux_head is not None and cam_bev is not None:
                aux = self.camera_aux_head(cam_bev, batch.ego_velocity)
            preds = self.head(fused, batch.ego_velocity)
            return (preds, depth, aux) if return_depth else (preds, aux)
        if return_depth:
            fused, depth = self.encode(batch, return_depth=True)
            return self.head(fused, batch.ego_velocity), depth
        return self.head(self.encode(batch), batch.ego_velocity)

    def add_aux_terms(self, terms: Dict[str, torch.Tensor], aux: Optional[List[Dict[str, torch.Tensor]]], targets,
                      batch: Batch, reduction: str = "sample") -> Dict[str, torch.Tensor]:
        """``terms`` with the weighted auxiliary camera-head loss as 'camera_aux', added to 'total'.

        aux: the auxiliary head's maps per task for the whole batch (or None); targets: the batch's
        HeadTargets. Only samples with a camera image take the loss (a sample whose cameras are all
        missing has nothing to learn from); 'sample' reduction averages their per-sample losses, 'batch'
        takes the head's loss over them together."""
        if self.aux_head_weight <= 0:
            return terms
        if aux is None:
            value = batch.ego_velocity.new_zeros(())
        else:
            rows = torch.nonzero(batch.modality_mask[:, 1].bool()).flatten().tolist()
            if not rows:
                # keep the auxiliary head in the graph (DDP expects every parameter to take a gradient)
                value = sum(v.sum() for p in aux for v in p.values()) * 0.0
            else:
                groups = [rows] if reduction == "batch" else [[r] for r in rows]
                value = 0.0
                for g in groups:
                    idx = torch.tensor(g, device=aux[0]["heatmap"].device)
                    p_g = [{k: v.index_select(0, idx) for k, v in p.items()} for p in aux]
                    t_g = targets._map(lambda t: t.index_select(0, idx.to(t.device)))
                    part = self.camera_aux_head.loss(p_g, t_g)
                    value = value + sum(part[name] for name in self.AUX_TERMS)
                    # the other outputs (velocity, attributes) join with weight 0: every parameter
                    # stays in the graph, as DDP without find_unused_parameters requires
                    value = value + 0.0 * sum(v for name, v in part.items()
                                              if name not in self.AUX_TERMS and name != "total")
                value = self.aux_head_weight * value / len(groups)
        return {**terms, "camera_aux": value, "total": terms["total"] + value}

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
        preds, depth, aux = self(batch, return_depth=True, return_aux=True)
        targets = (batch.targets if batch.targets is not None  # built by the training loader's workers
                   else self.head.targets(batch.gt_boxes, batch.gt_labels, batch.gt_attributes))
        terms = self.add_depth_terms(self.head.loss(preds, targets), depth, batch, "batch")
        return self.add_aux_terms(terms, aux, targets, batch, "batch")

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
