"""Datasets (synthetic and folder layouts) producing one manifest table; decoding; augmentation."""
