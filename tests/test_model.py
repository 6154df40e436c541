"""DeepLabV3Plus shapes, output stride, parameter groups and weight loading (CPU, tiny inputs)."""

from __future__ import annotations

import os
import urllib.error

import pytest
import torch
import torchvision.models as tvm
from torchvision.models._api import WeightsEnum

from s4al_ray.model import DeepLabV3Plus, build_model
from s4al_ray.model.atrous import AtrousConv2d
from s4al_ray.model.weights import IMAGENET_WEIGHTS, load_pretrained

NUM_CLASSES = 5
EMBED = 16


def _model(backbone: str, output_stride: int = 16) -> DeepLabV3Plus:
    torch.manual_seed(0)
    return build_model(NUM_CLASSES, backbone, output_stride, embed_dim=EMBED)


def _aspp_input_size(model: DeepLabV3Plus, x: torch.Tensor) -> tuple[int, int]:
    seen: list[tuple[int, int]] = []
    handle = model.aspp.register_forward_hook(
        lambda _m, inputs, _out: seen.append(tuple(inputs[0].shape[-2:]))
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("backbone", "output_stride"),
    [("mobilenet_v2", 16), ("mobilenet_v2", 8), ("resnet18", 16), ("resnet18", 8), ("resnet50", 8)],
)
def test_shapes_and_output_stride(backbone: str, output_stride: int) -> None:
    model = _model(backbone, output_stride)
    x = torch.randn(2, 3, 64, 64)
    out = model(x, with_embedding=True)
    assert out["logits"].shape == (2, NUM_CLASSES, 64, 64)
    assert out["logits_s4"].shape == (2, NUM_CLASSES, 16, 16)
    assert out["embedding"].shape == (2, EMBED, 16, 16)
    model.eval()
    assert _aspp_input_size(model, x) == (64 // output_stride, 64 // output_stride)


@pytest.mark.parametrize(("channels_in", "channels_out", "groups"), [(12, 12, 12), (6, 5, 1)])
@pytest.mark.parametrize("dilation", [2, 6, 12])
@pytest.mark.parametrize("size", [(6, 8), (7, 9), (13, 5), (1, 1), (3, 20)])
def test_atrous_conv_equals_the_dilated_conv(
    channels_in: int, channels_out: int, groups: int, dilation: int, size: tuple[int, int]
) -> None:
    # Skipped taps and phase grids (depthwise, CPU) against the direct dilated conv: the same
    # output and the same gradients for input, weight and bias, to float64 rounding.
    torch.manual_seed(0)
    conv = AtrousConv2d(
        channels_in, channels_out, 3, padding=dilation, dilation=dilation, groups=groups
    ).double()
    x = torch.randn(3, channels_in, *size, dtype=torch.double)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    out = conv(x)
    direct = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 1, dilation, dilation, groups)
    assert out.shape == direct.shape
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-12)
    with torch.no_grad():  # inference takes the direct call (with the skipped taps)
        torch.testing.assert_close(conv(x), direct, rtol=0, atol=1e-12)
    grad_out = torch.randn_like(out)
    params = [x, conv.weight, conv.bias]
    for mine, ref in zip(
        torch.autograd.grad((out * grad_out).sum(), params),
        torch.autograd.grad((direct * grad_out).sum(), params),
    ):
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-12)


def test_atrous_conv_falls_back_or_agrees_off_the_default_shapes() -> None:
    # Contiguous (not channels-last) input, batch 1, a depthwise multiplier (not the phase-grid
    # case) and a strided conv (not atrous at all): each equals the plain call.
    torch.manual_seed(0)
    cases = [
        (dict(groups=8, padding=2, dilation=2), 8, 8),
        (dict(groups=8, padding=2, dilation=2), 8, 16),
        (dict(groups=1, padding=2, dilation=2, stride=2), 8, 4),
    ]
    for kwargs, c_in, c_out in cases:
        conv = AtrousConv2d(c_in, c_out, 3, **kwargs).double()
        x = torch.randn(1, c_in, 7, 9, dtype=torch.double, requires_grad=True)
        plain = torch.nn.Conv2d.forward(conv, x)
        mine = conv(x)
        torch.testing.assert_close(mine, plain, rtol=0, atol=1e-12)
        for a, b in zip(
            torch.autograd.grad(mine.sum(), [x, conv.weight]),
            torch.autograd.grad(plain.sum(), [x, conv.weight]),
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_atrous_swap_leaves_a_seeded_initialisation_unchanged(monkeypatch) -> None:
    # Turning the dilated depthwise convs into AtrousConv2d draws nothing from the global RNG:
    # a seeded model starts from the same weights as without the swap.
    from s4al_ray.model import deeplab

    swapped = _model("mobilenet_v2").state_dict()
    monkeypatch.setattr(deeplab, "make_atrous", lambda conv: conv)
    plain = _model("mobilenet_v2").state_dict()
    assert swapped.keys() == plain.keys()
    for key in plain:
        assert torch.equal(swapped[key], plain[key]), key


@pytest.mark.parametrize("output_stride", [16, 8])
def test_atrous_rewrites_leave_the_model_unchanged(monkeypatch, output_stride: int) -> None:
    # The default image size (96x128): ASPP's rates outgrow the 6x8 map and MobileNetV2's last
    # blocks are dilated depthwise convs, so both rewrites run. Same loss and gradients as the
    # plain dilated convolutions.
    model = _model("mobilenet_v2", output_stride).double()
    x = torch.randn(2, 3, 96, 128, dtype=torch.double).to(memory_format=torch.channels_last)
    assert any(type(m) is AtrousConv2d for m in model.backbone.modules())

    def loss_and_grads() -> list[torch.Tensor]:
        torch.manual_seed(1)  # the same dropout mask for both
        out = model(x, with_embedding=True)
        loss = out["logits"].square().mean() + out["embedding"].square().mean()
        return [loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))]

    rewritten = loss_and_grads()
    monkeypatch.setattr(AtrousConv2d, "forward", torch.nn.Conv2d.forward)
    plain = loss_and_grads()
    for mine, ref in zip(rewritten, plain):
        torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-12)


def test_logits_only_by_default() -> None:
    model = _model("mobilenet_v2").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"logits"}


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_odd_input_size(backbone: str) -> None:
    model = _model(backbone).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 66, 98), with_embedding=True)
    assert out["logits"].shape == (1, NUM_CLASSES, 66, 98)
    # Stride-4 size of the skip: ceil(66/4)=17, ceil(98/4)=25 for both stems.
    assert out["logits_s4"].shape[-2:] == out["embedding"].shape[-2:] == (17, 25)


def test_train_mode_batch_of_one() -> None:
    # The image-pooling branch must not break on a 1x1 map with batch size 1.
    model = _model("mobilenet_v2").train()
    out = model(torch.randn(1, 3, 64, 64), with_embedding=True)
    out["logits"].mean().backward()


def test_resnet101_builds_and_runs() -> None:
    model = _model("resnet101", 16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), with_embedding=True)
    assert out["logits"].shape == (1, NUM_CLASSES, 32, 32)
    assert out["embedding"].shape == (1, EMBED, 8, 8)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_parameter_groups_cover_every_parameter_once(backbone: str) -> None:
    model = _model(backbone)
    groups = model.parameter_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    torch.optim.SGD(groups, lr=0.01)  # groups are valid optimizer input


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        build_model(NUM_CLASSES, "vgg16")
    for name in ("mobilenet_v2", "resnet18", "resnet50", "resnet101"):
        assert name in str(info.value)


def test_unknown_output_stride() -> None:
    with pytest.raises(ValueError, match="16, 8"):
        build_model(NUM_CLASSES, "mobilenet_v2", output_stride=32)


def test_checkpoint_round_trip_with_ddp_prefix(tmp_path) -> None:
    source = _model("mobilenet_v2")
    # Move BN statistics off their defaults so the round trip checks buffers too.
    source.train()
    source(torch.randn(2, 3, 64, 64))
    path = str(tmp_path / "ckpt.pt")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, path)

    torch.manual_seed(123)
    loaded = build_model(NUM_CLASSES, "mobilenet_v2", embed_dim=EMBED, pretrained=path)
    x = torch.randn(1, 3, 64, 64)
    source.eval()
    loaded.eval()
    with torch.no_grad():
        a, b = source(x, with_embedding=True), loaded(x, with_embedding=True)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_raw_state_dict_checkpoint(tmp_path) -> None:
    source = _model("mobilenet_v2")
    path = str(tmp_path / "raw.pt")
    torch.save(source.state_dict(), path)
    loaded = _model("mobilenet_v2")
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    load_pretrained(loaded, path)
    for (k, v), w in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k


def test_missing_checkpoint(tmp_path) -> None:
    path = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError) as info:
        build_model(NUM_CLASSES, pretrained=path)
    assert path in str(info.value)
    assert "none|imagenet" in str(info.value)


def _offline(*_args, **_kwargs):
    raise urllib.error.URLError("no network")


def test_imagenet_offline_names_cache_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(WeightsEnum, "get_state_dict", _offline)
    weights = IMAGENET_WEIGHTS["mobilenet_v2"]
    expected = os.path.join(str(tmp_path / "hub"), "checkpoints", os.path.basename(weights.url))
    with pytest.raises(RuntimeError) as info:
        build_model(NUM_CLASSES, pretrained="imagenet")
    assert expected in str(info.value)
    assert weights.url in str(info.value)
    assert "mobilenet_v2" in str(info.value)


def test_imagenet_from_hub_cache(tmp_path, monkeypatch) -> None:
    # A torchvision-format file in the cache is used without any download.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(WeightsEnum, "get_state_dict", _offline)
    weights = IMAGENET_WEIGHTS["mobilenet_v2"]
    os.makedirs(tmp_path / "checkpoints")
    torch.manual_seed(7)
    reference = tvm.mobilenet_v2(weights=None).state_dict()
    torch.save(reference, str(tmp_path / "checkpoints" / os.path.basename(weights.url)))

    model = build_model(NUM_CLASSES, pretrained="imagenet")
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key
