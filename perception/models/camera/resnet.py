"""A compact ResNet whose state-dict keys are torchvision's, so ImageNet weights load from a local file.

torchvision cannot be imported beside the CPU torch build of this project, so the architecture is
re-stated here: ``conv1, bn1, layer1..layer4`` with ``BasicBlock`` (resnet18/34) or ``Bottleneck``
(resnet50, stride on the 3x3 conv as torchvision's "v1.5"), ``downsample.0`` (1x1 conv) and
``downsample.1`` (BatchNorm2d). There is no ``fc``: the detector uses the four stage outputs, and
``load_pretrained`` ignores a checkpoint's ``fc.*``. Nothing is downloaded.

``width`` scales every stage (64 = torchvision's); a smaller width makes a tiny CPU model that no
ImageNet checkpoint fits.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Type, Union

import torch
from torch import nn

from ...config import ConfigError

log = logging.getLogger(__name__)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (torchvision's BasicBlock, same attribute names)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 x4 with a residual (torchvision's Bottleneck, same names)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """ResNet trunk without the classifier.

    block: BasicBlock or Bottleneck; layers: blocks per stage (4 numbers); width: channels of the
    stem and of stage 1's planes (64 = torchvision's).
    ``out_channels``: channels of the four stage outputs (C2, C3, C4, C5).
    """

    def __init__(self, block: Block, layers: List[int], width: int = 64):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got {layers}")
        self.width = int(width)
        self.inplanes = self.width
        self.conv1 = nn.Conv2d(3, self.width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, self.width, layers[0], 1)
        self.layer2 = self._make_layer(block, self.width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, self.width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, self.width * 8, layers[3], 2)
        self.out_channels = tuple(self.width * m * block.expansion for m in (1, 2, 4, 8))
        # torchvision's initialisation, so a randomly initialised model trains like theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: float[M, 3, H, W] normalized RGB -> [C2 (stride 4), C3 (8), C4 (16), C5 (32)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def resnet18(width: int = 64) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], width)


def resnet34(width: int = 64) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], width)


def resnet50(width: int = 64) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], width)


BACKBONES = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


class PretrainedWeightsError(ConfigError):
    """``model.camera.pretrained`` names a file that is missing, unreadable or not this backbone's."""


def load_pretrained(model: ResNet, path: str) -> ResNet:
    """Copy a torchvision ResNet state dict saved with ``torch.save`` into ``model`` (in place).

    ``fc.*`` entries are ignored; BatchNorm ``num_batches_tracked`` may be absent (torchvision's
    published checkpoints predate it). A missing or unreadable file, or any missing, unexpected or
    differently shaped entry, is a one-line PretrainedWeightsError naming the file and the first such
    parameter (in the model's order); nothing is loaded then.
    """
    where = f"model.camera.pretrained {path}"
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"{where}: file not found (make it as the README says: a torchvision "
                                     f"state dict saved with torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: torch raises several types
        raise PretrainedWeightsError(f"{where}: not a readable torch state dict "
                                     f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{where}: expected a state dict (mapping name -> tensor), "
                                     f"got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    hint = (f" (the model has backbone_width={model.width}; ImageNet checkpoints are for width 64)"
            if model.width != 64 else "")
    for name, tensor in own.items():
        if name not in state:
            if name.endswith("num_batches_tracked"):
                continue
            raise PretrainedWeightsError(f"{where}: parameter '{name}' is missing from the file{hint}")
        if not isinstance(state[name], torch.Tensor) or tuple(state[name].shape) != tuple(tensor.shape):
            shape = tuple(state[name].shape) if isinstance(state[name], torch.Tensor) else type(state[name]).__name__
            raise PretrainedWeightsError(f"{where}: parameter '{name}' has shape {shape} in the file but "
                                         f"{tuple(tensor.shape)} in the model{hint}")
    extra = [k for k in state if k not in own]
    if extra:
        raise PretrainedWeightsError(f"{where}: parameter '{extra[0]}' of the file does not exist in the model "
                                     f"({len(extra)} unexpected){hint}")
    # strict=False only for the tolerated num_batches_tracked; everything else was checked above.
    model.load_state_dict(state, strict=False)
    log.info("camera backbone: pretrained weights loaded from %s (%d tensors)", path, len(state))
    return model
