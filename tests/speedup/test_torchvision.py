"""Every torchvision classification family: random channel masks on every conv (and on the linear layers of
transformer families), speedup, output equal to the masked model's, fewer parameters and FLOPs. Large
members are built with fewer blocks or a smaller classifier (same family, same block types) to keep this fast.

BatchNorm biases and running means are left at torchvision's zero init (a masked channel's BN shift is then
zero, see the issue); BN scales and running variances are randomised so that they matter.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .helpers import channel_masks, count_flops, speedup_and_check

tvm = pytest.importorskip("torchvision.models")


def _maxvit():
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(64, 64), stem_channels=16, partition_size=2, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=10)


def _small_head(model, attr="classifier"):
    """Replace the 4096-wide classifier (slow to build, irrelevant here) by a small one of the same shape kind."""
    head = getattr(model, attr)
    first = next(m for m in head if isinstance(m, nn.Linear))
    setattr(model, attr, nn.Sequential(nn.Dropout(), nn.Linear(first.in_features, 64), nn.ReLU(), nn.Linear(64, 10)))
    return model


def _resnet(**kw):
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], **kw)


def _efficientnet_v2():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last = _efficientnet_conf("efficientnet_v2_s")
    return EfficientNet(setting[:4], 0.0, last_channel=last)  # fused-MBConv and MBConv stages


def _convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)])


def _vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)


def _swin(v2: bool):
    from torchvision.models import swin_transformer as st

    extra = {"block": st.SwinTransformerBlockV2, "downsample_layer": st.PatchMergingV2} if v2 else {}
    return st.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                              window_size=[4, 4], **extra)


def _densenet():
    from torchvision.models.densenet import DenseNet

    return DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=16)


FAMILIES = {
    "alexnet": (lambda: _small_head(tvm.alexnet()), 64),
    "vgg": (lambda: _small_head(tvm.vgg11_bn()), 32),
    "resnet": (lambda: tvm.resnet18(), 64),
    "resnet_bottleneck": (lambda: _resnet(), 64),
    "resnext": (lambda: _resnet(groups=32, width_per_group=4), 64),
    "wide_resnet": (lambda: _resnet(width_per_group=128), 64),
    "squeezenet": (lambda: tvm.squeezenet1_1(), 64),
    "densenet": (_densenet, 64),
    "googlenet": (lambda: tvm.googlenet(aux_logits=False, init_weights=True), 64),
    "inception": (lambda: tvm.inception_v3(aux_logits=False, init_weights=True), 80),
    "shufflenet": (lambda: tvm.shufflenet_v2_x0_5(), 64),
    "mnasnet": (lambda: tvm.mnasnet0_5(), 64),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(width_mult=0.5), 64),
    "mobilenet_v3": (lambda: tvm.mobilenet_v3_small(), 64),
    "efficientnet": (lambda: tvm.efficientnet_b0(), 64),
    "efficientnet_v2": (_efficientnet_v2, 64),
    "regnet_x": (lambda: tvm.regnet_x_400mf(), 64),
    "regnet_y": (lambda: tvm.regnet_y_400mf(), 64),
    "convnext": (_convnext, 64),
    "vit": (_vit, 32),
    "swin": (lambda: _swin(False), 64),
    "swin_v2": (lambda: _swin(True), 64),
    "maxvit": (_maxvit, 64),
}


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.filterwarnings("ignore::nnic.speedup.SpeedupWarning")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_speeds_up_with_the_masked_models_output(family):
    build, size = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, size, size)
    types = (nn.Conv2d, nn.Linear)
    masks = channel_masks(model, 0.5, seed=1, types=types)
    flops_before = count_flops(model, x)
    before, after = speedup_and_check(model, x, masks)
    assert after < before, f"{family}: no parameter removed"
    assert count_flops(model, x) < flops_before, f"{family}: no FLOP removed"


def test_a_plain_cnn_loses_what_its_masks_say():
    """Without coupling (VGG-style), 50% channel masks on every conv remove half the channels of each."""
    torch.manual_seed(0)
    model = _small_head(tvm.vgg11_bn()).eval()
    masks = channel_masks(model, 0.5, seed=0, types=(nn.Conv2d,))
    speedup_and_check(model, torch.randn(1, 3, 32, 32), masks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 256, 256]
    assert model.classifier[1].in_features == 256 * 7 * 7
