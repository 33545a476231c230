"""``build_model(cfg)``: the one place that reads the model config."""
from __future__ import annotations

from ..config import Config
from .detector import FusionDetector
from .fusion.cross_attention import build_fusion
from .heads.centerpoint import build_head
from .lidar.pointpillars import SECONDFPN, build_lidar_encoder
from .radar.radar_pillars import build_radar_encoder


def build_model(cfg: Config) -> FusionDetector:
    m = cfg.model
    lidar = build_lidar_encoder(cfg) if m.use_lidar else None
    radar = build_radar_encoder(cfg) if m.use_radar else None
    camera = None
    if m.use_camera:
        from .camera.lss import build_camera_encoder

        camera = build_camera_encoder(cfg)
    d = m.decoder
    # The decoder keeps the fused grid and width (stride 1 out, bev_channels), so the head is unchanged.
    decoder = SECONDFPN(m.bev_channels, d.layers, d.strides, d.channels, d.neck_channels, 1, m.bev_channels) \
        if d.layers else None
    # training-only auxiliary head on the camera's BEV map (same layout as the fused head, its own weights)
    aux = build_head(cfg) if camera is not None and m.camera.aux_head_weight > 0 else None
    return FusionDetector(lidar, camera, radar, build_fusion(cfg), build_head(cfg),
                          depth_loss_weight=m.camera.depth_loss_weight, decoder=decoder,
                          camera_aux_head=aux, aux_head_weight=m.camera.aux_head_weight,
                          aux_detach_depth=m.camera.aux_detach_depth)
