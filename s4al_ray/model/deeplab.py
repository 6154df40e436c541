"""DeepLabv3+ with a representation head for the ReCo contrastive loss (S4AL+ model).

The backbone is split at stride 4 (low-level skip) and at the end of the last stage (high-level
feature, stride 16 or 8 by dilation). ASPP and a light decoder produce stride-4 logits; a second
head beside the classifier turns the same 304-channel decoder features into pixel embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn

from s4al_ray.model.atrous import AtrousConv2d, make_atrous
from s4al_ray.model.weights import load_pretrained

if TYPE_CHECKING:
    from s4al_ray.config import ModelConfig

BACKBONES: tuple[str, ...] = ("mobilenet_v2", "resnet18", "resnet50", "resnet101")
OUTPUT_STRIDES: tuple[int, ...] = (16, 8)
# Atrous rates scale with the output stride so the receptive field stays the same in pixels.
ASPP_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}
LOW_LEVEL_CHANNELS = 48
DECODER_CHANNELS = 256


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}")


def check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        valid = ", ".join(str(s) for s in OUTPUT_STRIDES)
        raise ValueError(f"unsupported output_stride {output_stride!r}; valid values: {valid}")


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    conv = AtrousConv2d if dilation > 1 else nn.Conv2d
    return nn.Sequential(
        conv(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _set_conv(conv: nn.Conv2d, stride: int, dilation: int) -> None:
    """Re-stride / re-dilate a conv in place; padding follows so spatial size is preserved."""
    conv.stride = (stride, stride)
    conv.dilation = (dilation, dilation)
    if conv.kernel_size[0] > 1:
        pad = dilation * (conv.kernel_size[0] // 2)
        conv.padding = (pad, pad)


# -- backbones


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features[0..17]; the final 1x1 conv to 1280 channels is dropped.

    Module names match torchvision's (``features.N...``) so ImageNet weights load directly.
    """

    low_channels = 24
    high_channels = 320
    # Indices of the inverted-residual blocks that downsample to stride 16 and stride 32.
    _STRIDE16_BLOCK = 7
    _STRIDE32_BLOCK = 14

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        net = tvm.mobilenet_v2(weights=None)
        self.features = nn.Sequential(*list(net.features.children())[:18])
        self._dilate(output_stride)

    def _dilate(self, output_stride: int) -> None:
        # A block that used to downsample keeps the current dilation (a stride-2 3x3 conv "sees"
        # that spacing); every block after it runs at twice the dilation instead.
        unstrided = {self._STRIDE32_BLOCK}
        if output_stride == 8:
            unstrided.add(self._STRIDE16_BLOCK)
        dilation = 1
        for idx, block in enumerate(self.features):
            if idx in unstrided:
                self._set_depthwise(block, dilation)
                dilation *= 2
            elif dilation > 1:
                self._set_depthwise(block, dilation)

    @staticmethod
    def _set_depthwise(block: nn.Module, dilation: int) -> None:
        """Re-dilate the block's depthwise conv, made an AtrousConv2d when dilated."""
        for module in block.modules():
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                _set_conv(module, stride=1, dilation=dilation)
                if dilation > 1:
                    make_atrous(module)
                return
        raise RuntimeError("inverted-residual block without a depthwise conv")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.features[:4](x)
        high = self.features[4:](low)
        return low, high


class ResNetBackbone(nn.Module):
    """ResNet stem + layer1..layer4 (no pooling / fc); names match torchvision's."""

    def __init__(self, name: str, output_stride: int) -> None:
        super().__init__()
        # Which of layer2/3/4 trade their stride for dilation.
        dilate = [False, output_stride == 8, True]
        if name == "resnet18":
            # BasicBlock refuses dilation > 1 via the constructor, so it is patched afterwards.
            net = tvm.resnet18(weights=None)
        else:
            factory: Callable[..., tvm.ResNet] = getattr(tvm, name)
            net = factory(weights=None, replace_stride_with_dilation=dilate)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        if name == "resnet18":
            self._dilate_basic_blocks(dilate)
        expansion = 1 if name == "resnet18" else 4
        self.low_channels = 64 * expansion
        self.high_channels = 512 * expansion

    def _dilate_basic_blocks(self, dilate: list[bool]) -> None:
        dilation = 1
        for layer, flag in zip((self.layer2, self.layer3, self.layer4), dilate):
            if not flag:
                continue
            previous, dilation = dilation, dilation * 2
            for idx, block in enumerate(layer):
                # Same scheme as torchvision's Bottleneck: the formerly strided conv keeps the
                # previous dilation, every later 3x3 conv uses the new one.
                _set_conv(block.conv1, stride=1, dilation=previous if idx == 0 else dilation)
                _set_conv(block.conv2, stride=1, dilation=dilation)
                if block.downsample is not None:
                    _set_conv(block.downsample[0], stride=1, dilation=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high


def _build_backbone(name: str, output_stride: int) -> MobileNetV2Backbone | ResNetBackbone:
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(output_stride)
    return ResNetBackbone(name, output_stride)


# -- heads


class ASPP(nn.Module):
    """1x1 branch, three atrous 3x3 branches and image pooling, projected to `channels`."""

    def __init__(self, in_ch: int, channels: int, rates: tuple[int, int, int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_ch, channels, 1)]
            + [_conv_bn_relu(in_ch, channels, 3, dilation=r) for r in rates]
        )
        # No BatchNorm after pooling: a 1x1 map with batch size 1 has a single value per channel,
        # on which BN fails in training mode (e.g. a last, short batch).
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, channels, 1), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            nn.Conv2d(channels * (len(rates) + 2), channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = F.interpolate(
            self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.project(torch.cat(outs + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with a classifier and a representation head on the stride-4 decoder features."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "mobilenet_v2",
        output_stride: int = 16,
        embed_dim: int = 256,
        aspp_channels: int = 256,
        decoder_channels: int = DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        check_output_stride(output_stride)
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.embed_dim = embed_dim
        self.backbone = _build_backbone(backbone, output_stride)
        self.aspp = ASPP(self.backbone.high_channels, aspp_channels, ASPP_RATES[output_stride])
        self.low_proj = _conv_bn_relu(self.backbone.low_channels, LOW_LEVEL_CHANNELS, 1)
        fused = aspp_channels + LOW_LEVEL_CHANNELS  # 304 with the defaults
        self.classifier = nn.Sequential(
            _conv_bn_relu(fused, decoder_channels, 3),
            _conv_bn_relu(decoder_channels, decoder_channels, 3),
            nn.Conv2d(decoder_channels, num_classes, 1),
        )
        self.representation = nn.Sequential(
            _conv_bn_relu(fused, decoder_channels, 3),
            nn.Conv2d(decoder_channels, embed_dim, 1),
        )
        self._init_heads()

    def _init_heads(self) -> None:
        # The backbone keeps torchvision's init (or ImageNet weights); only the new heads here.
        for module in self.head_modules():
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def head_modules(self) -> list[nn.Module]:
        return [self.aspp, self.low_proj, self.classifier, self.representation]

    def forward(self, x: Tensor, with_embedding: bool = False) -> dict[str, Tensor]:
        low, high = self.backbone(x)
        context = self.aspp(high)
        # Upsample to the skip's exact size: input sizes need not be multiples of the stride.
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        fused = torch.cat([context, self.low_proj(low)], dim=1)
        logits_s4 = self.classifier(fused)
        logits = F.interpolate(logits_s4, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = {"logits": logits}
        if with_embedding:
            out["logits_s4"] = logits_s4
            out["embedding"] = self.representation(fused)  # normalised by the loss, not here
        return out

    def parameter_groups(self, head_lr_mult: float = 10.0) -> list[dict]:
        """Backbone at the base lr, the freshly initialised heads at ``head_lr_mult`` times it
        (10 in the S4AL+ code; ``train.head_lr_mult``)."""
        head_params = [p for m in self.head_modules() for p in m.parameters()]
        return [
            {"params": list(self.backbone.parameters()), "lr_mult": 1.0, "name": "backbone"},
            {"params": head_params, "lr_mult": head_lr_mult, "name": "head"},
        ]


def build_model(
    num_classes: int,
    backbone: str = "mobilenet_v2",
    output_stride: int = 16,
    embed_dim: int = 256,
    pretrained: str = "none",
    head_channels: int = 256,
) -> DeepLabV3Plus:
    """Build the model and load `pretrained` (none | imagenet | checkpoint path or s3:// URI).

    ``head_channels`` sets the ASPP and decoder width (256 in the paper); narrower heads make the
    CPU default fast without changing the architecture."""
    model = DeepLabV3Plus(
        num_classes,
        backbone,
        output_stride,
        embed_dim,
        aspp_channels=head_channels,
        decoder_channels=head_channels,
    )
    load_pretrained(model, pretrained)
    # Channels-last weights make every convolution run (and hand on) NHWC activations, the
    # first one converting the NCHW input: oneDNN's NHWC kernels are faster on CPU (training
    # step 8%, teacher forward 20% on a 2-vCPU VM: benchmarks/memory_format.py), as cuDNN's
    # are under autocast.
    return model.to(memory_format=torch.channels_last)


def model_from_config(
    model: ModelConfig, num_classes: int, pretrained: str | None = None
) -> DeepLabV3Plus:
    """Build from the ``model`` section of a config. ``pretrained`` overrides the configured
    weights (e.g. "none" before loading a checkpoint)."""
    return build_model(
        num_classes,
        model.backbone,
        model.output_stride,
        model.embed_dim,
        pretrained=model.pretrained if pretrained is None else pretrained,
        head_channels=model.head_channels,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
