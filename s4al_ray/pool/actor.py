"""The pool actor: the single writer of the pool state, persisted before every commit returns.

Storage, not the actor, is the source of truth: a restarted actor (``max_restarts=-1``) reloads
the state in its constructor, and commits are idempotent, so Ray's task retries are safe.
"""

from __future__ import annotations

import ray

from s4al_ray import storage
from s4al_ray.layout import RunLayout
from s4al_ray.pool.oracle import SimulatedOracle
from s4al_ray.pool.state import PoolState, Selection

NAMESPACE = "s4al_ray"


def load_state(layout: RunLayout, warn=print) -> PoolState | None:
    """The persisted state, or None for a new run. Writes are atomic, but a file damaged by
    anything else (a copy cut short, a full disk on a network filesystem) must not lose the run:
    the previous version, kept beside it, is used instead, with a warning."""
    uri, previous = layout.pool_state, layout.pool_state_previous
    if not storage.exists(uri):
        return None
    try:
        return PoolState.from_json(storage.read_text(uri))
    except (ValueError, KeyError, TypeError) as err:
        if "incompatible" in str(err) or not storage.exists(previous):
            raise
        warn(
            f"WARNING: {uri} is unreadable ({str(err)[:80]}); using the previous version "
            f"{previous}: the last commit is redone"
        )
        return PoolState.from_json(storage.read_text(previous))


class PoolStateHolder:
    """The actor's body, kept importable without Ray so it can be tested directly."""

    def __init__(self, layout: RunLayout, initial_json: str, mask_uris: dict[str, str]) -> None:
        self.layout = layout
        loaded = load_state(layout)
        self.state = loaded or PoolState.from_json(initial_json)
        if loaded is None:
            self._persist()
        self.oracle = SimulatedOracle(mask_uris, self.state.num_classes)

    def _persist(self) -> None:
        uri = self.layout.pool_state
        if storage.exists(uri):
            storage.write_bytes(self.layout.pool_state_previous, storage.read_bytes(uri))
        storage.write_text(uri, self.state.to_json())

    def snapshot(self) -> str:
        return self.state.to_json()

    def commit(
        self, round_index: int, selection: Selection, class_pixels: list[int] | None = None
    ) -> dict:
        """Commit a round. The simulated oracle counts the revealed classes from the dataset's
        masks; a manual import passes the counts of the annotators' masks."""
        previous = self.state.entry(round_index)
        if previous is not None:
            class_pixels = previous["class_pixels"]
        elif class_pixels is None:
            self.state.validate_selection(selection)
            class_pixels = self.oracle.reveal(self.state, selection)
        entry = self.state.commit(round_index, selection, class_pixels)
        self._persist()
        return entry


PoolActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(PoolStateHolder)


def get_pool_actor(
    experiment: str, layout: RunLayout, initial: PoolState, mask_uris: dict[str, str]
):
    """The experiment's pool actor, created if needed (a rerun driver reattaches to it)."""
    return PoolActor.options(
        name=f"pool-{experiment}",
        namespace=NAMESPACE,
        get_if_exists=True,
    ).remote(layout, initial.to_json(), mask_uris)


def pool_snapshot(actor) -> PoolState:
    """The committed state, as the actor holds it now."""
    return PoolState.from_json(ray.get(actor.snapshot.remote()))
