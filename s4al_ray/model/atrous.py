"""Atrous (dilated) convolution computed the cheap way, with the same result and parameters.

Two exact rewrites of a dilated 3x3 convolution whose padding equals its dilation (every atrous
conv of DeepLab), chosen per call from the input's size and device:

- **Unreachable taps are skipped.** A tap ``d`` pixels off the centre only ever reads padding
  when the map is no larger than ``d`` along that axis: ASPP's rates 12 and 18 on a 6x8 map (a
  96x128 image at output stride 16) reduce to a 1x1 conv, rate 6 to a 1x3. The result and every
  gradient are the same (a skipped tap's weight gradient is zero either way); the arithmetic is
  5/27 of the three branches'.
- **Depthwise convs training on CPU run as undilated convs on the d x d phase grids**
  (space-to-batch, as in TensorFlow's atrous_conv2d): at the sizes of MobileNetV2's last blocks
  oneDNN's dilated depthwise backward is slow, by how much depends on the machine (the layer's
  forward + backward 5.2 ms direct against 2.0 ms on the phase grids on one 2-vCPU VM; backward
  13.5 ms dilated against 0.7 ms undilated on another: BENCHMARKS.md, "Exact rewrites of the
  step"). Pixel (i, j) of a dilation-d conv only reads pixels of its own phase (i mod d, j mod d),
  so the conv splits into d*d independent undilated convs over those grids, padded to a multiple
  of d with the zeros the original padding would have read. CUDA keeps the direct call: the
  rewrite answers a oneDNN cost, and cuDNN's was never measured here.

The module is an ``nn.Conv2d`` with the same ``weight``/``bias`` and no state of its own:
checkpoints and ImageNet weights load unchanged, and ``make_atrous`` converts an existing conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AtrousConv2d(nn.Conv2d):
    """A 3x3 ``nn.Conv2d`` with ``padding == dilation``, computed by the cheapest exact route."""

    def forward(self, x: Tensor) -> Tensor:
        d = self.dilation[0]
        if d == 1 or not _is_atrous_3x3(self):
            return super().forward(x)
        height, width = x.shape[-2:]
        # Taps beyond the map on an axis only read padding: keep the centre row/column only.
        rows = slice(1, 2) if height <= d else slice(0, 3)
        cols = slice(1, 2) if width <= d else slice(0, 3)
        weight = self.weight[:, :, rows, cols]
        pad = (0 if height <= d else d, 0 if width <= d else d)
        if pad == (0, 0):
            return F.conv2d(x, weight, self.bias, self.stride, 0, 1, self.groups)
        depthwise = self.groups == self.in_channels == self.out_channels
        # Only where a backward follows: oneDNN's dilated forward is fast, and the phase grids'
        # copies make inference slower (BENCHMARKS.md, "Exact rewrites of the step").
        if depthwise and x.device.type == "cpu" and torch.is_grad_enabled():
            return phase_grid_conv(x, weight, self.bias, d, pad, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, pad, (d, d), self.groups)


def _is_atrous_3x3(conv: nn.Conv2d) -> bool:
    """Square dilation, 3x3 kernel, stride 1, zero padding equal to the dilation."""
    d = conv.dilation[0]
    return (
        conv.kernel_size == (3, 3)
        and conv.dilation == (d, d)
        and conv.stride == (1, 1)
        and conv.padding == (d, d)
        and conv.padding_mode == "zeros"
    )


def phase_grid_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, d: int, pad: tuple[int, int], groups: int
) -> Tensor:
    """A stride-1 conv of dilation ``d`` (padding ``pad``, each 0 or d) as undilated convs over
    the d x d phase grids of ``x``, batched along the batch axis."""
    batch, channels, height, width = x.shape
    grid_h, grid_w = -(-height // d), -(-width // d)  # ceil: the tail phase grids are padded
    if (grid_h * d, grid_w * d) != (height, width):
        # Zeros below / right of the map are the zeros the dilated conv's padding reads there.
        x = F.pad(x, (0, grid_w * d - width, 0, grid_h * d - height))
    # (B, C, gh*d, gw*d) -> (d, d, B, gh, gw, C) in memory -> (d*d*B, C, gh, gw) channels-last:
    # one copy, and the conv sees the NHWC layout the model runs in.
    phases = (
        x.permute(0, 2, 3, 1)
        .reshape(batch, grid_h, d, grid_w, d, channels)
        .permute(2, 4, 0, 1, 3, 5)
        .reshape(d * d * batch, grid_h, grid_w, channels)
        .permute(0, 3, 1, 2)
    )
    out = F.conv2d(phases, weight, bias, 1, (pad[0] // d, pad[1] // d), 1, groups)
    out_channels = out.shape[1]
    out = (
        out.permute(0, 2, 3, 1)
        .reshape(d, d, batch, grid_h, grid_w, out_channels)
        .permute(2, 3, 0, 4, 1, 5)
        .reshape(batch, grid_h * d, grid_w * d, out_channels)
        .permute(0, 3, 1, 2)
    )
    return out[:, :, :height, :width]


def make_atrous(conv: nn.Conv2d) -> AtrousConv2d:
    """Turn ``conv`` into an ``AtrousConv2d`` in place: the same object, parameters and place in
    its parent. Building a new module instead would initialise (then discard) a weight, drawing
    from the global RNG, and shift every later initialisation of a seeded model."""
    if type(conv) is not nn.Conv2d:
        raise TypeError(f"expected a plain nn.Conv2d, got {type(conv).__name__}")
    conv.__class__ = AtrousConv2d
    return conv
