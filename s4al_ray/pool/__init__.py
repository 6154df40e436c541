"""Pool state: which images are fully labeled, which regions of pool images are acquired."""

from s4al_ray.regions import RegionGrid
from s4al_ray.pool.state import PoolState

__all__ = ["RegionGrid", "PoolState"]
