"""Label efficiency on the built-in synthetic dataset (the S4AL+ headline, measured).

Runs, on one local Ray, the fully supervised reference (every train image labeled) and, at the same
labeled-pixel budgets: S4AL+ with active acquisition (entropy, and class-weighted entropy), S4AL+
with random acquisition, and supervised-only training on the labeled pixels. Prints mIoU and % of
the fully supervised mIoU against % labeled pixels, and saves the curves as a PNG and the numbers
as JSON.

    python benchmarks/label_efficiency.py                 # the full comparison (CPU: ~35 min)
    python benchmarks/label_efficiency.py --quick         # a minutes-long smoke version
    python benchmarks/label_efficiency.py --methods "s4al+ active,s4al+ random" \
        --out runs/benchmarks/label_efficiency_10pct \
        data.initial_labeled_frac=0.1 acquisition.round_budget=0.01 loop.rounds=3
                                                          # the papers' protocol: 10% -> 12%
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from s4al_ray.config import load_config  # noqa: E402
from s4al_ray.experiment import Experiment  # noqa: E402
from s4al_ray.runtime import connect  # noqa: E402

METHODS = {
    "full": ["data.initial_labeled_frac=1.0", "loop.rounds=1"],
    "s4al+ active": [],
    "s4al+ class-weighted": ["acquisition.function=class_weighted_entropy"],
    "s4al+ random": ["acquisition.function=random"],
    "supervised-only active": [
        "train.pseudo_labels=false",
        "train.reco_weight=0",
        "train.class_balanced=false",
    ],
}


QUICK_OVERRIDES = ["train.epochs=1", "train.steps_per_epoch=10", "loop.rounds=2"]


def benchmark_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options every label-efficiency-setting benchmark takes (this one and ablations.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/label_efficiency.yaml")
    parser.add_argument("--quick", action="store_true", help="smoke-sized runs (minutes)")
    parser.add_argument("--out", default=out)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    return parser


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides applied to every run: its storage, the user's overrides, and --quick sizing."""
    common = [f"storage={args.out}", *args.overrides]
    return [*common, *QUICK_OVERRIDES] if args.quick else common


def run_method(base: str, label: str, overrides: list[str], common: list[str]) -> list[dict]:
    name = "bench-" + re.sub(r"[^A-Za-z0-9_.]+", "-", label.replace("+", "plus")).strip("-")
    cfg = load_config(base, [*common, *overrides, f"name={name}"])
    started = time.perf_counter()
    records = Experiment(cfg, log=lambda line: print(f"  {label:>22s} | {line}")).run()
    print(f"  {label:>22s} | finished in {time.perf_counter() - started:.0f}s")
    return records


def summarise(results: dict[str, list[dict]]) -> list[dict]:
    full = results["full"][-1]["val/miou"]
    rows = []
    for label, records in results.items():
        for rec in records:
            rows.append(
                {
                    "method": label,
                    "round": rec["round"],
                    "labeled_pct": 100 * rec["pool/labeled_frac"],
                    "miou_pct": 100 * rec["val/miou"],
                    "of_full_pct": 100 * rec["val/miou"] / full,
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'method':>22s}  {'round':>5s}  {'labeled %':>9s}  {'mIoU %':>7s}  {'% of full':>9s}")
    for row in rows:
        print(
            f"{row['method']:>22s}  {row['round']:5d}  {row['labeled_pct']:9.2f}  "
            f"{row['miou_pct']:7.1f}  {row['of_full_pct']:9.1f}"
        )


def plot(rows: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    full = next(r for r in rows if r["method"] == "full")
    ax.axhline(full["miou_pct"], color="black", lw=1, ls="--", label="fully supervised")
    ax.axhline(0.95 * full["miou_pct"], color="grey", lw=1, ls=":", label="95% of full")
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "full"):
        points = [r for r in rows if r["method"] == method]
        ax.plot(
            [p["labeled_pct"] for p in points], [p["miou_pct"] for p in points], "o-", label=method
        )
    ax.set_xlabel("labeled pixels (% of train pixels)")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("Label efficiency on the synthetic street scenes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/benchmarks/label_efficiency")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of: "
        + ", ".join(METHODS)
        + " (full is always run: every other figure is a share of it)",
    )
    args = parser.parse_args()
    chosen = ["full", *[m.strip() for m in args.methods.split(",") if m.strip() != "full"]]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    common = shared_overrides(args)
    base = load_config(args.config, common)
    connect(base)
    # The reference trains as many steps in its one round as the others do over all rounds.
    methods = {label: METHODS[label] for label in chosen}
    methods["full"] = [*METHODS["full"], f"train.epochs={base.train.epochs * base.loop.rounds}"]
    results = {
        label: run_method(args.config, label, overrides, common)
        for label, overrides in methods.items()
    }
    rows = summarise(results)
    print_table(rows)
    os.makedirs(args.out, exist_ok=True)
    plot(rows, os.path.join(args.out, "label_efficiency.png"))
    with open(os.path.join(args.out, "label_efficiency.json"), "w") as handle:
        json.dump(rows, handle, indent=1)
    print(f"\ncurve: {args.out}/label_efficiency.png  numbers: {args.out}/label_efficiency.json")


if __name__ == "__main__":
    main()
