"""Copy a directory tree to or from S3 with progress: datasets up, run results down.

``python run.py sync data_cache/my_dataset s3://bucket/datasets/my_dataset``
``python run.py sync s3://bucket/s4al-runs/cityscapes runs/cityscapes``

Files already at the destination with the same size are skipped, so an interrupted sync is
resumed by running it again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from s4al_ray import storage


@dataclass
class Plan:
    pairs: list[tuple[str, str, int]]  # (source, destination, bytes)
    skipped: int


def _client(endpoint: str | None):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint or storage.s3_endpoint(), region_name=storage.s3_region()
    )


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len(storage.S3_PREFIX) :].partition("/")
    return bucket, prefix.strip("/")


def _s3_objects(client, uri: str) -> dict[str, int]:
    """Relative key -> size of every object under ``uri``."""
    bucket, prefix = _split(uri)
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""
    ):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix) :].lstrip("/")] = obj["Size"]
    return found


def _local_files(root: str) -> dict[str, int]:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root).replace(os.sep, "/")] = os.path.getsize(path)
    return found


def _plan(sources: dict[str, int], existing: dict[str, int]) -> Plan:
    pairs = [(rel, rel, size) for rel, size in sorted(sources.items()) if existing.get(rel) != size]
    return Plan(pairs, len(sources) - len(pairs))


class _Progress:
    def __init__(self, plan: Plan, log: Callable[[str], None]) -> None:
        self.total = sum(size for _, _, size in plan.pairs)
        self.count, self.files, self.done = len(plan.pairs), 0, 0
        self.log, self.last = log, 0.0

    def advance(self, size: int) -> None:
        self.files += 1
        self.done += size
        now = time.monotonic()
        if now - self.last > 2.0 or self.files == self.count:
            self.last = now
            self.log(
                f"[sync] {self.files}/{self.count} files, "
                f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
            )


def sync(
    source: str, destination: str, endpoint: str | None = None, log: Callable[[str], None] = print
) -> int:
    """Copy ``source`` to ``destination`` (one of them ``s3://``); returns files copied."""
    if storage.is_s3(source) == storage.is_s3(destination):
        raise ValueError(
            f"sync copies between a local directory and an s3:// URI; got {source} -> {destination}"
        )
    client = _client(endpoint)
    if storage.is_s3(destination):
        plan = _plan(_local_files(source), _s3_objects(client, destination))
        bucket, prefix = _split(destination)

        def copy(rel: str) -> None:
            client.upload_file(
                os.path.join(source, rel), bucket, f"{prefix}/{rel}" if prefix else rel
            )

    else:
        if not os.path.isdir(destination):
            os.makedirs(destination, exist_ok=True)
        plan = _plan(_s3_objects(client, source), _local_files(destination))
        bucket, prefix = _split(source)

        def copy(rel: str) -> None:
            target = os.path.join(destination, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            client.download_file(bucket, f"{prefix}/{rel}" if prefix else rel, target)

    log(
        f"[sync] {source} -> {destination}: {len(plan.pairs)} files to copy, "
        f"{plan.skipped} already there"
    )
    progress = _Progress(plan, log)
    for rel, _, size in plan.pairs:
        copy(rel)
        progress.advance(size)
    return len(plan.pairs)
