"""Training losses."""

from s4al_ray.losses.reco import reco_loss

__all__ = ["reco_loss"]
