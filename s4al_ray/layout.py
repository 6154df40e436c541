"""Where everything of one run lives: the only module that spells out the run directory's layout.

A run directory (``<storage>/<name>``, local or ``s3://``) holds::

    config.yaml, s4al_run.json        the resolved config and the format marker
    rounds.csv, rounds/round_XXX.json one record per finished round
    checkpoints/round_XXX.pt|.json    each round's student and its final metrics
    train/                            Ray Train's per-epoch checkpoints (resume mid-round)
    teacher/round_XXX/, .json         the teacher pass (parquet) and its summary
    pool/head.json, head.prev.json    the pool state's head (rounds, counts), its previous version
    pool/labeled.json                 the fully labeled ids, written once
    pool/rounds/round_XXX.parquet     one committed round's selection (its delta)
    superpixels/<sample_id>.png       acquisition.regions=slic: each train image's segment map
    superpixels/regions.parquet       ... and every superpixel's area (written last)
    queries/round_XXX/                manual oracle: the package for annotators
    oracle/labels/<sample_id>.png     manual oracle: the merged human labels
    report/                           report.html and its figures
    evaluate/<split>_<checkpoint>/    a checkpoint's scores on a split (python run.py evaluate)
    tensorboard/                      TensorBoard event files (tracking: [tensorboard])
    wandb/                            W&B's run files (tracking: [wandb], offline without a key)
    tracking.json                     the tracked runs' ids (MLflow, W&B): a resume continues them
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from s4al_ray import storage

# 2: teacher parquet histograms hold 256 confidence levels per class (were 20 bins).
# 3: the pool state is a small head + one delta file per round (pool/head.json, pool/rounds/),
#    no longer one pool/state.json; image sizes come from the manifest, not the state.
RUN_FORMAT = 3


def round_name(r: int) -> str:
    """A round's name: its folders and files here, and its model version in annotation tools."""
    return f"round_{r:03d}"


@dataclass(frozen=True)
class RunLayout:
    run_dir: str

    @classmethod
    def of(cls, storage_root: str, name: str) -> "RunLayout":
        """The layout of experiment ``name`` under ``storage_root`` (made absolute when local)."""
        return cls(storage.join(storage.absolute(storage_root), name))

    def path(self, *parts: str) -> str:
        return storage.join(self.run_dir, *parts)

    # -- the run as a whole
    @property
    def config(self) -> str:
        return self.path("config.yaml")

    @property
    def marker(self) -> str:
        return self.path("s4al_run.json")

    @property
    def rounds_csv(self) -> str:
        return self.path("rounds.csv")

    def record(self, r: int) -> str:
        return self.path("rounds", f"{round_name(r)}.json")

    # -- the student
    def checkpoint(self, r: int) -> str:
        """The round's published student: ``{"model": state_dict}``."""
        return self.path("checkpoints", f"{round_name(r)}.pt")

    def checkpoint_rounds(self) -> list[int]:
        """The rounds that have a published student, in order."""
        names = [f.rsplit("/", 1)[-1] for f in storage.list_files(self.path("checkpoints"), ".pt")]
        found = [re.fullmatch(r"round_(\d+)\.pt", name) for name in names]
        return sorted(int(m.group(1)) for m in found if m)

    def train_metrics(self, r: int) -> str:
        return self.path("checkpoints", f"{round_name(r)}.json")

    def train_inputs(self, r: int) -> str:
        """The rows round ``r``'s workers read (labeled, pool shards, val)."""
        return self.path("train_inputs", f"{round_name(r)}.parquet")

    @property
    def train_dir(self) -> str:
        return self.path("train")

    # -- the teacher
    def teacher(self, r: int) -> str:
        return self.path("teacher", round_name(r))

    def teacher_summary(self, r: int) -> str:
        return self.path("teacher", f"{round_name(r)}.json")

    # -- the pool and its oracle
    @property
    def pool_dir(self) -> str:
        return self.path("pool")

    @property
    def pool_head(self) -> str:
        return self.path("pool", "head.json")

    @property
    def pool_head_previous(self) -> str:
        return self.path("pool", "head.prev.json")

    @property
    def pool_labeled(self) -> str:
        return self.path("pool", "labeled.json")

    @staticmethod
    def pool_round_name(r: int) -> str:
        """Round ``r``'s delta file, relative to ``pool_dir`` (as the head names it)."""
        return f"rounds/{round_name(r)}.parquet"

    def pool_file(self, name: str) -> str:
        """A file the head names, relative to ``pool_dir``."""
        return self.path("pool", *name.split("/"))

    def pool_round(self, r: int) -> str:
        return self.pool_file(self.pool_round_name(r))

    @property
    def legacy_pool_state(self) -> str:
        """Run format 2's single-file pool state: only looked for, to refuse it by name."""
        return self.path("pool", "state.json")

    @property
    def queries_dir(self) -> str:
        return self.path("queries")

    def queries(self, r: int) -> str:
        return self.path("queries", round_name(r))

    @property
    def superpixels_dir(self) -> str:
        """The segment map of every train image (``<sample_id>.png``) and their areas
        (``regions.parquet``), read and written by ``region_maps.py``."""
        return self.path("superpixels")

    def oracle_label(self, sample_id: str) -> str:
        return self.path("oracle", "labels", f"{sample_id}.png")

    # -- the report
    @property
    def report_dir(self) -> str:
        return self.path("report")

    def report_file(self, name: str) -> str:
        return self.path("report", name)

    @staticmethod
    def examples_figure(r: int) -> str:
        """The file name (inside ``report_dir``) of round ``r``'s examples grid."""
        return f"examples_{round_name(r)}.png"

    @staticmethod
    def examples_round(file_name: str) -> int | None:
        """The round of an examples-grid file name, None for any other file."""
        match = re.fullmatch(r"examples_round_(\d+)\.png", file_name)
        return int(match.group(1)) if match else None

    @property
    def tracking(self) -> str:
        return self.path("tracking.json")

    @property
    def tensorboard_dir(self) -> str:
        return self.path("tensorboard")

    @property
    def wandb_dir(self) -> str:
        """W&B's ``wandb/`` folder (offline runs, ``tracking: [wandb]``)."""
        return self.path("wandb")

    # -- checkpoints scored by ``python run.py evaluate`` (and the last round's test split)
    def evaluation(self, split: str, checkpoint_label: str) -> str:
        return self.path("evaluate", f"{split}_{checkpoint_label}")

    def round_evaluation(self, split: str, r: int) -> str:
        """Round ``r``'s student scored on ``split``."""
        return self.evaluation(split, self.round_label(r))

    @staticmethod
    def round_label(r: int) -> str:
        """``round_003``: how a round is named in the run directory's files."""
        return round_name(r)

    # -- scratch space (benchmarks)
    def scratch(self, *parts: str) -> str:
        return self.path("bench", *parts)
