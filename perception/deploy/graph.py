"""The detector as one exportable graph: plain tensors in, the head's maps out.

What stays outside the graph, in ``prepare_inputs`` (shared by every backend):
- voxelization (the numba kernels) -> pillar tensors with a dynamic count;
- the camera geometry: which BEV cell every frustum point falls in (3x3 inverses in float64, computed
  once per calibration in deployment), the depth net's camera parameters and ray geometry.
What follows the graph, ``decode_outputs`` (shared by every backend): the head's ``decode`` (top-K peaks,
per-class peak filter, attribute masking, circle NMS) on the maps, whatever produced them.

Inside the graph the two scatter ops get torch-native formulations that export to standard ONNX
(``scatter_add`` -> ScatterElements with reduction add; see ``scatter_rows``): the pillar scatter and the lift-splat BEV pooling
(``perception.ops.bev_pool``'s numba kernel in eager mode). Both send what they drop (padding pillars,
frustum points outside the grid, absent cameras) to one extra row past the grid that is cut off
afterwards, so every shape stays static but the pillar counts. Absent sensors are inputs (``present``,
``camera_mask``), not constants: one graph serves every sensor combination.

Graph inputs (B: the export's batch size, static; N: cameras of the config; names as in ``INPUTS``):
  lidar_voxels float32[Ml, P, 5], lidar_num_points int64[Ml], lidar_coords int64[Ml, 4] (batch, z, y, x)
  images float32[B, N, 3, H, W]; camera_cells int64[B, N, D, fH, fW] linear BEV cell b*Hb*Wb + y*Wb + x
  of each frustum point, -1 dropped; camera_params float32[B, N, 7]; camera_rays float32[B, N, 3, fH, fW]
  camera_mask bool[B, N]
  radar_voxels float32[Mr, P, 7], radar_num_points int64[Mr], radar_coords int64[Mr, 4]
  present bool[B, 3] (lidar, camera, radar) in the sample and in the model; ego_velocity float32[B, 3]
Ml and Mr are dynamic (>= 1: ``prepare_inputs`` adds a padding pillar with batch index -1).
Outputs per task t: heatmap_t, offset_t, height_t, size_t, yaw_t, velocity_t, attribute_t (CenterHead.forward).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..structures import Batch, Detections

HEAD_OUTPUTS = ("heatmap", "offset", "height", "size", "yaw", "velocity", "attribute")
LIDAR_INPUTS = ("lidar_voxels", "lidar_num_points", "lidar_coords")
CAMERA_INPUTS = ("images", "camera_cells", "camera_params", "camera_rays", "camera_mask")
RADAR_INPUTS = ("radar_voxels", "radar_num_points", "radar_coords")


def input_names(model) -> List[str]:
    """Graph input names of ``model`` (a FusionDetector), in the graph's order."""
    names: List[str] = []
    if model.lidar is not None:
        names += LIDAR_INPUTS
    if model.camera is not None:
        names += CAMERA_INPUTS if model.camera.depth_net.camera_aware else \
            [n for n in CAMERA_INPUTS if n != "camera_rays"]
    if model.radar is not None:
        names += RADAR_INPUTS
    return names + ["present", "ego_velocity"]


def output_names(model) -> List[str]:
    return [f"{name}_{t}" for t in range(len(model.head.tasks)) for name in model.head.output_names]


def pillar_features(pfn, voxels: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``PillarFeatureNet.forward`` (eval mode) without the boolean-mask gather: the MLP runs on every
    point row, padding included, and the padding is masked after. In eval mode its BatchNorm is a
    per-row affine map, so the valid rows get the values they get alone. float[M, out_channels]."""
    M, P, _ = voxels.shape
    valid = (torch.arange(P, device=voxels.device)[None, :] < num_points[:, None]).unsqueeze(-1)  # [M, P, 1]
    xyz = voxels[..., :3]
    mean = (xyz * valid).sum(1, keepdim=True) / num_points.clamp(min=1).view(M, 1, 1).to(xyz.dtype)
    centre = (coords[:, [3, 2, 1]].to(xyz.dtype) + 0.5) * pfn.voxel_size + pfn.range_min
    feats = torch.cat([voxels, xyz - mean, xyz - centre[:, None, :]], dim=-1)
    x = pfn.mlp(feats.reshape(M * P, -1)).view(M, P, -1)
    x = torch.where(valid, x, torch.full_like(x, -1.0))  # padding rows never win the max
    return x.max(dim=1).values.clamp(min=0.0)


def scatter_rows(feats: torch.Tensor, cells: torch.Tensor, batch_size: int, grid_hw: Sequence[int]) -> torch.Tensor:
    """Sum of feats float[K, C] into BEV cells: float[B, C, H, W]. cells: int64[K] linear cell
    b*H*W + y*W + x, or -1 to drop (summed into a spare row that is cut off).

    scatter_add, which exports as ScatterElements(reduction=add), not index_add (ScatterND): ONNX
    Runtime 1.32's CPU ScatterND adds duplicate indices from several threads (onnxruntime#18048); with
    it, runs of one frame differed from each other by 1e-6 and once, on the loaded 2-core machine, by
    0.014 in a heatmap. Its ScatterElements adds in one thread, in index order. With one row per cell
    (pillars) it is a plain scatter."""
    H, W = grid_hw
    n = batch_size * H * W
    C = feats.shape[1]
    idx = torch.where(cells >= 0, cells, torch.full_like(cells, n))
    rows = feats.new_zeros(n + 1, C).scatter_add(0, idx.view(-1, 1).expand(-1, C), feats)
    return rows[:n].view(batch_size, H, W, C).permute(0, 3, 1, 2)


def pillar_cells(coords: torch.Tensor, batch_size: int, grid_hw: Sequence[int]) -> torch.Tensor:
    """int64[M] linear cell of each pillar, coords int64[M, 4] (batch, z, y, x); -1 for batch < 0."""
    H, W = grid_hw
    b, y, x = coords[:, 0], coords[:, 2], coords[:, 3]
    return torch.where(b >= 0, (b * H + y) * W + x, torch.full_like(b, -1))


class ExportableDetector(nn.Module):
    """A FusionDetector (eval mode) as a function of plain tensors (see the module docstring).

    model: the FusionDetector; batch_size: B of the graph (static)
    Same parameters, same math as ``model(batch)``; the fusion runs its fast path (equal to the
    reference within 1e-5).
    """

    def __init__(self, model, batch_size: int = 1):
        super().__init__()
        self.model = model
        self.B = int(batch_size)
        self.inputs = input_names(model)

    def forward(self, *args: torch.Tensor):
        a = dict(zip(self.inputs, args))
        m, B = self.model, self.B
        feats: List[Optional[torch.Tensor]] = [None, None, None]
        if m.lidar is not None:
            enc = m.lidar
            f = pillar_features(enc.pfn, a["lidar_voxels"], a["lidar_num_points"], a["lidar_coords"])
            canvas = scatter_rows(f, pillar_cells(a["lidar_coords"], B, enc.grid_hw), B, enc.grid_hw)
            feats[0] = enc.backbone(canvas)
        if m.camera is not None:
            feats[1] = self._camera(a)
        if m.radar is not None:
            enc = m.radar
            f = pillar_features(enc.pfn, a["radar_voxels"], a["radar_num_points"], a["radar_coords"])
            feats[2] = enc.convs(scatter_rows(f, pillar_cells(a["radar_coords"], B, enc.grid_hw), B, enc.grid_hw))
        fusion = m.fusion
        impl = fusion.implementation
        fusion.implementation = "fast"
        try:
            fused = fusion(feats, a["present"])
        finally:
            fusion.implementation = impl
        if m.decoder is not None:
            fused = m.decoder(fused)
        preds = m.head(fused, a["ego_velocity"])
        return tuple(p[name] for p in preds for name in m.head.output_names)

    def _camera(self, a: Dict[str, torch.Tensor]) -> torch.Tensor:
        """LiftSplatEncoder.forward on every camera slot (absent ones too: their frustum points are
        dropped by camera_cells and the images are independent through the eval-mode network)."""
        cam, B = self.model.camera, self.B
        images = a["images"]
        _, N, _, H, W = images.shape
        fH, fW = cam.feature_hw
        rays = a["camera_rays"].reshape(B * N, 3, fH, fW) if "camera_rays" in a else None
        logits, context = cam.image_features(images.reshape(B * N, 3, H, W), a["camera_params"].reshape(B * N, -1),
                                             rays)
        depth = logits.softmax(dim=1)  # [BN, D, fH, fW]
        C = context.shape[1]
        # the LSS outer product, one row per frustum point in (image, depth bin, row, col) order
        pts = (depth.unsqueeze(2) * context.unsqueeze(1)).permute(0, 1, 3, 4, 2).reshape(-1, C)
        bev = scatter_rows(pts, a["camera_cells"].reshape(-1), B, cam.bev_hw)
        out = cam.bev_encoder(bev)
        return out * a["camera_mask"].any(dim=1).to(out.dtype).view(B, 1, 1, 1)


def _padded_pillars(voxels: torch.Tensor, nums: torch.Tensor, coords: torch.Tensor):
    """One padding pillar (no points, batch -1) appended: the graph never sees an empty pillar set."""
    P, F = voxels.shape[1:]
    return (torch.cat([voxels, voxels.new_zeros(1, P, F)]), torch.cat([nums.long(), nums.new_zeros(1).long()]),
            torch.cat([coords.long(), torch.tensor([[-1, 0, 0, 0]], dtype=torch.long, device=coords.device)]))


@torch.no_grad()
def prepare_inputs(model, batch: Batch) -> "OrderedDict[str, torch.Tensor]":
    """The graph's inputs for ``batch`` (see the module docstring), on the batch's device; shared by
    the torch and ONNX Runtime backends and by the export's sample input."""
    B = batch.batch_size
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    present = batch.modality_mask.clone().bool()
    if model.lidar is not None:
        was = model.lidar.training
        model.lidar.eval()  # the inference voxel cap
        try:
            out.update(zip(LIDAR_INPUTS, _padded_pillars(*model.lidar.pillars(batch.lidar_points))))
        finally:
            model.lidar.train(was)
    else:
        present[:, 0] = False
    if model.camera is not None:
        out.update(camera_inputs(model.camera, batch))
    else:
        present[:, 1] = False
    if model.radar is not None:
        out.update(zip(RADAR_INPUTS, _padded_pillars(*model.radar.pillars(batch.radar_points))))
    else:
        present[:, 2] = False
    out["present"] = present
    out["ego_velocity"] = batch.ego_velocity.float()
    return out


def camera_inputs(cam, batch: Batch) -> "OrderedDict[str, torch.Tensor]":
    """images, camera_cells, camera_params, (camera_rays,) camera_mask of every camera slot (the
    geometry as ``LiftSplatEncoder.splat`` computes it: float64 chain, float32 points, floor)."""
    from ..models.camera.lss import camera_params

    images, mask = batch.images.float(), batch.camera_mask.bool()
    B, N = mask.shape
    K, A, T = (x.reshape(B * N, *x.shape[2:]).float() for x in (batch.intrinsics, batch.img_aug, batch.T_ego_from_cam))
    pts = cam.ego_points(K, A, T)  # [BN, D, fH, fW, 3]
    yx, keep = cam.bev_coords(pts)
    Hb, Wb = cam.bev_hw
    b = torch.arange(B, device=pts.device).repeat_interleave(N).view(B * N, 1, 1, 1)
    keep = keep & mask.reshape(B * N, 1, 1, 1)
    cells = torch.where(keep, (b * Hb + yx[..., 0]) * Wb + yx[..., 1], torch.full_like(yx[..., 0], -1))
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    out["images"] = images
    out["camera_cells"] = cells.view(B, N, *cells.shape[1:])
    out["camera_params"] = camera_params(K, A, T, cam.image_size).view(B, N, -1)
    if cam.depth_net.camera_aware:
        rays = cam.cell_rays(K, A, T)
        out["camera_rays"] = rays.view(B, N, *rays.shape[1:])
    out["camera_mask"] = mask
    return out


def outputs_to_preds(outputs: Sequence, num_tasks: int,
                     names: Sequence[str] = HEAD_OUTPUTS) -> List[Dict[str, torch.Tensor]]:
    """Graph outputs (tensors or numpy arrays, ``output_names`` order) -> the head's per-task dicts.
    names: the head's ``output_names`` (HEAD_OUTPUTS, plus 'direction' with a direction classifier)."""
    preds = []
    for t in range(num_tasks):
        row = outputs[t * len(names):(t + 1) * len(names)]
        preds.append({name: torch.as_tensor(v) for name, v in zip(names, row)})
    return preds


def decode_outputs(model, outputs: Sequence, batch: Batch) -> List[Detections]:
    """The one post-processing of every backend: the head's decode on the graph's outputs."""
    return model.head.decode(outputs_to_preds(outputs, len(model.head.tasks), model.head.output_names),
                             batch.sample_tokens, batch.timestamps)
