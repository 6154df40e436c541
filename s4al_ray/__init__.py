"""s4al-ray: S4AL+ active semi-supervised semantic segmentation on Ray."""

__version__ = "0.1.0"
IGNORE_INDEX = 255
