"""The pool actor: the single writer of the pool state, persisted before every commit returns.

Storage, not the actor, is the source of truth: a restarted actor (``max_restarts=-1``) reloads
the state in its constructor, and commits are idempotent, so Ray's task retries are safe. The
actor gets the image sizes from the driver (the manifest's), with the initial state.
"""

from __future__ import annotations

from collections.abc import Mapping

import ray

from s4al_ray.layout import RunLayout
from s4al_ray.pool.index import ImageSizes
from s4al_ray.pool.oracle import SimulatedOracle
from s4al_ray.pool.state import PoolState, Selection
from s4al_ray.pool.store import (
    check_format,
    read_state,
    warm_parquet_writer,
    write_commit,
    write_initial,
)

NAMESPACE = "s4al_ray"


def load_state(layout: RunLayout, sizes: ImageSizes | Mapping, warn=print) -> PoolState | None:
    """The persisted state of the run at ``layout`` over these train images (the manifest's
    sizes), or None for a new run. A damaged head falls back to its previous version, with a
    warning; a run of an older format is refused by name (``store.PoolStateError``)."""
    loaded = read_state(layout, ImageSizes.of(sizes), warn)
    return None if loaded is None else loaded[0]


class PoolStateHolder:
    """The actor's body, kept importable without Ray so it can be tested directly."""

    def __init__(self, layout: RunLayout, initial: PoolState, mask_uris: dict[str, str]) -> None:
        self.layout = layout
        loaded = read_state(layout, initial.sizes)
        if loaded is None:
            # A copy: a caller in this process keeps its object unchanged by later commits.
            self.state = initial.before(float("inf"))
            self._head = write_initial(layout, self.state)
        else:
            self.state, self._head = loaded
        self.oracle = SimulatedOracle(mask_uris, self.state.num_classes)
        warm_parquet_writer()

    def snapshot(self) -> PoolState:
        """The committed state. Through Ray the caller gets a copy (Ray pickles it); a caller
        in this process gets the live object."""
        return self.state

    def fingerprint(self) -> str:
        """The committed state's ``PoolState.fingerprint``: what a driver holding a copy checks
        before fetching it again (``pool_snapshot``)."""
        return self.state.fingerprint

    def commit(
        self,
        round_index: int,
        selection: Selection,
        class_pixels: list[int] | None = None,
        with_selection: bool = True,
    ) -> dict:
        """Commit a round; returns its ledger entry. The simulated oracle counts the revealed
        classes from the dataset's masks; a manual import passes the counts of the annotators'
        masks. ``with_selection=False``: the entry's selection is None (the caller holds it; at
        10^6 images it is ~60 MB of ids and regions to send back)."""
        previous = self.state.entry(round_index)
        if previous is not None:
            class_pixels = previous["class_pixels"]
        elif class_pixels is None:
            self.state.validate_selection(selection)
            class_pixels = self.oracle.reveal(self.state, selection)
        entry = self.state.commit(round_index, selection, class_pixels, persist=self._persist)
        return entry if with_selection else {**entry, "selection": None}

    def _persist(self, entry: dict) -> None:
        self._head = write_commit(self.layout, self.state, entry, self._head)


PoolActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(PoolStateHolder)


def get_pool_actor(
    experiment: str, layout: RunLayout, initial: PoolState, mask_uris: dict[str, str]
):
    """The experiment's pool actor, created if needed (a rerun driver reattaches to it). A run
    directory of an older format is refused here, in the driver, by name."""
    check_format(layout)
    return PoolActor.options(
        name=f"pool-{experiment}",
        namespace=NAMESPACE,
        get_if_exists=True,
    ).remote(layout, initial, mask_uris)


def pool_snapshot(actor, known: PoolState | None = None) -> PoolState:
    """The committed state, as the actor holds it now (fetched once per round). ``known``: a
    state this driver holds already (its initial state, or the last round's after its commit);
    when it is the actor's (same fingerprint) it is returned as is rather than sent again: at
    10^6 images the copy costs ~1 s and a second pool's worth of driver memory."""
    if known is not None and ray.get(actor.fingerprint.remote()) == known.fingerprint:
        return known
    return ray.get(actor.snapshot.remote())
