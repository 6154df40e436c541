"""Loading initial weights into a DeepLabV3Plus: none, ImageNet (backbone only) or a checkpoint.

ImageNet weights are read from the torch hub cache first, so clusters without internet work once
the file has been placed there; the reference code downloaded them on every build.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torchvision.models as tvm
from torch import Tensor

from s4al_ray import storage

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

PRETRAINED_CHOICES = "none|imagenet|<path or s3:// URI>"

IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {
    "mobilenet_v2": tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
    "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1,
}

_DDP_PREFIX = "module."


def load_pretrained(model: torch.nn.Module, pretrained: str) -> None:
    """Load `pretrained` into `model` in place: "none", "imagenet", or a checkpoint path/URI."""
    if pretrained == "none":
        return
    if pretrained == "imagenet":
        load_imagenet_backbone(model)
        return
    load_checkpoint(model, pretrained)


# -- ImageNet


def imagenet_cache_path(weights: WeightsEnum) -> str:
    """Where torch hub keeps (and looks for) the downloaded file of `weights`."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    weights = IMAGENET_WEIGHTS[backbone]
    path = imagenet_cache_path(weights)
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # offline, proxy, TLS...: all end the same way for the user
        raise RuntimeError(
            f"ImageNet weights for backbone {backbone!r} are not cached and could not be "
            f"downloaded ({type(err).__name__}: {err}). Download {weights.url} and place it at "
            f"{path} (torch hub dir; set TORCH_HOME to move it), or set model.pretrained=none."
        ) from err


def load_imagenet_backbone(model: torch.nn.Module) -> None:
    """Load torchvision ImageNet weights into the backbone; the heads keep their init."""
    state = _imagenet_state_dict(model.backbone_name)
    # The backbone mirrors torchvision's module names but drops the classifier (and, for
    # MobileNetV2, the final 1280-channel conv), so only the keys it owns are kept.
    wanted = model.backbone.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise RuntimeError(
            f"ImageNet checkpoint for {model.backbone_name!r} lacks backbone keys: {missing[:5]}"
        )
    model.backbone.load_state_dict({k: state[k] for k in wanted}, strict=True)


# -- checkpoints


def _read_checkpoint(uri: str) -> object:
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"pretrained checkpoint not found: {uri}; model.pretrained accepts {PRETRAINED_CHOICES}"
        ) from err
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _model_state(obj: object, uri: str) -> dict[str, Tensor]:
    """Accept a raw state_dict or a training checkpoint holding it under "model"."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{uri}: not a state_dict nor a checkpoint with a 'model' state_dict")
    # Checkpoints saved from a DistributedDataParallel wrapper carry a "module." prefix.
    return {k[len(_DDP_PREFIX) :] if k.startswith(_DDP_PREFIX) else k: v for k, v in obj.items()}


def load_checkpoint(model: torch.nn.Module, uri: str) -> None:
    """Load a full-model checkpoint (local path or s3:// URI) with strict key matching."""
    state = _model_state(_read_checkpoint(uri), uri)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"checkpoint {uri} does not match the model: {err}") from err
