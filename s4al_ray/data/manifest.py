"""The manifest: one Arrow table of every sample, read by every stage.

Columns: ``sample_id`` (stable id, the only id that crosses module borders), ``image_uri``,
``mask_uri``, ``split`` (train/val/test), ``height``, ``width``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("image_uri", pa.string()),
        ("mask_uri", pa.string()),
        ("split", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
    ]
)


@dataclass
class DatasetInfo:
    manifest: pa.Table
    classes: list[str]
    ignore_index: int = 255
    # Raw mask value -> class id (256-entry uint8 table); None = masks already hold class ids.
    # Training, the oracle and evaluation read mask_uri as class ids, so loaders of datasets
    # whose files hold other ids (Cityscapes label ids, CamVid void=11) apply this table once
    # while writing the prepared cache and hand those stages a DatasetInfo with None here
    # (see s4al_ray/data/prepare.py). check_dataset honours it, so raw data can be checked too.
    label_map: np.ndarray | None = None
    # One RGB colour per class, the dataset's own palette for figures; None = it has none.
    colors: list[tuple[int, int, int]] | None = None
    # Prepared copy -> the source file it was made from (s4al_ray/data/prepare.py), so the
    # dataset check names the file to fix, not the copy; None = the files are the sources.
    sources: dict[str, str] | None = None

    def __post_init__(self) -> None:
        # Palettes arrive as lists from YAML, JSON and module constants: one form for readers.
        if self.colors is not None:
            self.colors = [(int(r), int(g), int(b)) for r, g, b in self.colors]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def rows(self, split: str) -> list[dict]:
        return [r for r in self.manifest.to_pylist() if r["split"] == split]

    def source_of(self, uri: str) -> str:
        """The file to fix for ``uri``: its source when ``uri`` is a prepared copy."""
        return (self.sources or {}).get(uri, uri)


def make_manifest(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)
