"""Pool state: which images are fully labeled, which regions of pool images are acquired."""

from s4al_ray.pool.index import ImageSizes
from s4al_ray.pool.state import PoolState
from s4al_ray.regions import RegionGrid

__all__ = ["ImageSizes", "RegionGrid", "PoolState"]
