"""Camera branch: torchvision-compatible ResNet backbone and the lift-splat BEV encoder."""
from .lss import FPN, LiftSplatEncoder, build_camera_encoder
from .resnet import BasicBlock, Bottleneck, ResNet, load_pretrained, resnet18, resnet34, resnet50

__all__ = ["FPN", "LiftSplatEncoder", "build_camera_encoder", "BasicBlock", "Bottleneck", "ResNet",
           "load_pretrained", "resnet18", "resnet34", "resnet50"]
