"""DeepLabv3+ segmentation model with a representation head (S4AL+)."""

from s4al_ray.model.deeplab import DeepLabV3Plus, build_model, model_from_config, unwrap

__all__ = ["DeepLabV3Plus", "build_model", "model_from_config", "unwrap"]
