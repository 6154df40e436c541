"""Label efficiency on the built-in synthetic dataset (the S4AL+ headline, measured over seeds).

Runs, on one local Ray, the fully supervised reference (every train image labeled) and, at the same
labeled-pixel budgets, the chosen methods (S4AL+ with entropy acquisition, class-balanced
selection, with a ReCo warm-up, class-weighted entropy, random acquisition, supervised-only), each
for every seed. Prints mIoU, % of the same seed's fully supervised mIoU and the rarest classes'
IoU as mean ± standard deviation over the seeds, and each method's gain over random paired by
seed; saves the curves as a PNG and every number as JSON. Runs already finished are read back, so
a stopped benchmark continues, and methods can be added later at the cost of a Ray start.

    python benchmarks/label_efficiency.py --seeds 0,1,2   # full, class-balanced, random: ~50 min
    python benchmarks/label_efficiency.py --seeds 0,1,2 \
        --methods "s4al+ active,s4al+ class-balanced + ReCo warm-up"      # ~18 min a method
    python benchmarks/label_efficiency.py --seeds 0,1,2 --methods "s4al+ diverse" \
        --reuse benchmarks/results/label_efficiency.json  # the other methods from that file
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
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from s4al_ray.config import load_config  # noqa: E402
from s4al_ray.experiment import Experiment  # noqa: E402
from s4al_ray.runtime import connect  # noqa: E402

METHODS = {
    "full": ["data.initial_labeled_frac=1.0", "loop.rounds=1"],
    "s4al+ active": [],
    "s4al+ class-balanced": ["acquisition.selection=class_balanced"],
    # ReCo's weight ramped over the first half of the run (round 0 and 1 at the benchmark's size)
    "s4al+ class-balanced + ReCo warm-up": [
        "acquisition.selection=class_balanced",
        "reco.warmup_steps=200",
    ],
    "s4al+ class-balanced + ReCo off": [
        "acquisition.selection=class_balanced",
        "train.reco_weight=0",
    ],
    "s4al+ diverse": ["acquisition.selection=diverse"],
    "s4al+ diverse + ReCo warm-up": ["acquisition.selection=diverse", "reco.warmup_steps=200"],
    # SLIC superpixels of about 20x20 px as the unit of labeling, instead of 20x20 squares.
    "s4al+ superpixels": ["acquisition.regions=slic"],
    "s4al+ class-weighted": ["acquisition.function=class_weighted_entropy"],
    "s4al+ random": ["acquisition.function=random"],
    # The upper bound of error-seeking acquisition: regions by the teacher's true error rate.
    "s4al+ oracle error": ["acquisition.function=oracle_error"],
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
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated experiment seeds; every figure is reported as mean and standard "
        "deviation over them (model initialisation, initial labeled set, sampling)",
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    return parser


def parse_seeds(parser: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: {text!r} is not a comma-separated list of integers")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds: {text!r} must name at least one seed, each once")
    return seeds


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides applied to every run: its storage, the user's overrides, and --quick sizing."""
    common = [f"storage={args.out}", *args.overrides]
    return [*common, *QUICK_OVERRIDES] if args.quick else common


def run_name(label: str, seed: int | None = None) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", label.replace("+", "plus")).strip("-")
    return f"bench-{slug}" if seed is None else f"bench-{slug}-seed{seed}"


def acquired_class_mix(storage_root: str, label: str, seed: int) -> list[int]:
    """Pixels per class of everything ``label``'s run acquired (the pool head's ledger)."""
    from s4al_ray.layout import RunLayout
    from s4al_ray.storage import read_text

    head = json.loads(read_text(RunLayout.of(storage_root, run_name(label, seed)).pool_head))
    return np.sum([r["class_pixels"] for r in head["rounds"]], axis=0).astype(int).tolist()


def print_class_mix(storage_root: str, methods, seeds, classes, rare, reused: dict):
    """Which classes each method's acquired pixels show (ground truth), summed over seeds: what
    the selection rule changes, apart from whether the student learns from it. ``reused``: the
    mixes of methods carried from an earlier results file."""
    mix = dict(reused)
    print("\nacquired pixels per class (% of all acquired, all rounds and seeds):")
    for method in methods:
        total = np.sum([acquired_class_mix(storage_root, method, s) for s in seeds], axis=0)
        mix[method] = dict(zip(classes, (100 * total / max(total.sum(), 1)).tolist()))
    for method in mix:
        shares = ", ".join(f"{c} {mix[method][c]:.1f}" for c in rare)
        print(f"  {method:>22s}: {shares}")
    return mix


def run_method(
    base: str, label: str, overrides: list[str], common: list[str], seed: int | None = None
) -> list[dict]:
    """One run of ``label``'s overrides; a finished run of the same name is read back (the
    round loop resumes), so an interrupted benchmark continues where it stopped."""
    name = run_name(label, seed)
    seeded = [] if seed is None else [f"seed={seed}"]
    cfg = load_config(base, [*common, *overrides, *seeded, f"name={name}"])
    tag = label if seed is None else f"{label} s{seed}"
    started = time.perf_counter()
    records = Experiment(cfg, log=lambda line: print(f"  {tag:>25s} | {line}")).run()
    print(f"  {tag:>25s} | finished in {time.perf_counter() - started:.0f}s")
    return records


def reused_results(parser, path: str | None, seeds: list[int], named: list[str]) -> dict:
    """The runs and acquired class mixes of ``path``'s methods that ``named`` does not rerun
    (its seeds must be ``seeds``); nothing without ``path``."""
    if not path:
        return {"methods": [], "runs": [], "acquired_class_pct": {}}
    try:
        with open(path) as handle:
            earlier = json.load(handle)
        runs, mixes = earlier["runs"], earlier["acquired_class_pct"]
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"--reuse {path}: not a label_efficiency.json ({err})")
    if sorted(earlier.get("seeds", [])) != sorted(seeds):
        parser.error(f"--reuse {path}: it holds seeds {earlier.get('seeds')}, not {seeds}")
    methods = [m for m in dict.fromkeys(r["method"] for r in runs) if m not in named]
    print(f"reported from {path}, not rerun: {', '.join(methods)}")
    return {
        "methods": methods,
        "runs": [r for r in runs if r["method"] in methods],
        "acquired_class_pct": {m: mixes[m] for m in methods if m in mixes},
    }


def summarise(
    results: dict[tuple[str, int], list[dict]], classes: list[str], full_miou: dict[int, float]
) -> list[dict]:
    """One row per (method, seed, round); shares of full are of the same seed's full run
    (``full_miou``: its val mIoU in %, per seed)."""
    rows = []
    for (label, seed), records in results.items():
        full = full_miou[seed] / 100
        for rec in records:
            rows.append(
                {
                    "method": label,
                    "seed": seed,
                    "round": rec["round"],
                    "labeled_pct": 100 * rec["pool/labeled_frac"],
                    "miou_pct": 100 * rec["val/miou"],
                    "of_full_pct": 100 * rec["val/miou"] / full,
                    **{f"iou/{c}": 100 * rec[f"val/iou/{c}"] for c in classes},
                }
            )
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def across_seeds(rows: list[dict], classes: list[str]) -> list[dict]:
    """Per (method, round): mean and standard deviation over seeds of every figure."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["round"]), []).append(row)
    fields = ["labeled_pct", "miou_pct", "of_full_pct", *(f"iou/{c}" for c in classes)]
    summary = []
    for (method, rnd), members in groups.items():
        entry: dict = {"method": method, "round": rnd, "seeds": len(members)}
        for name in fields:
            entry[name], entry[f"{name}_std"] = mean_std([m[name] for m in members])
        summary.append(entry)
    return summary


def rarest_classes(data_frequencies: dict[str, float], count: int = 3) -> list[str]:
    return sorted(data_frequencies, key=data_frequencies.get)[:count]


def print_table(summary: list[dict], rare: list[str]) -> None:
    heads = (
        f"{'method':>22s}  {'round':>5s}  {'labeled %':>9s}  {'mIoU %':>12s}  {'% of full':>12s}"
    )
    print("\n" + heads + "".join(f"  {c:>12s}" for c in rare))
    for row in summary:
        cells = [
            f"{row['method']:>22s}  {row['round']:5d}  {row['labeled_pct']:9.2f}",
            f"{row['miou_pct']:6.1f} ±{row['miou_pct_std']:4.1f}",
            f"{row['of_full_pct']:6.1f} ±{row['of_full_pct_std']:4.1f}",
            *(f"{row[f'iou/{c}']:6.1f} ±{row[f'iou/{c}_std']:4.1f}" for c in rare),
        ]
        print("  ".join(cells))


def gains(rows: list[dict], baseline: str = "s4al+ random") -> dict[str, dict]:
    """Each method's mIoU minus the baseline's in the same seed and round (the same labeled
    pixels), at the last round: the mean and standard deviation of those paired differences,
    and the spread of the method's own seeds, which a gain must clearly exceed."""
    by_key = {(r["method"], r["seed"], r["round"]): r for r in rows}
    last = max((r["round"] for r in rows if r["method"] == baseline), default=None)
    if last is None:
        return {}
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        if method in ("full", baseline):
            continue
        pairs = [
            (by_key[(method, s, last)], by_key[(baseline, s, last)])
            for (m, s, rnd) in by_key
            if m == method and rnd == last and (baseline, s, last) in by_key
        ]
        if not pairs:
            continue
        diff = mean_std([a["miou_pct"] - b["miou_pct"] for a, b in pairs])
        own = mean_std([a["miou_pct"] for a, _ in pairs])
        out[method] = {"round": last, "gain": diff[0], "gain_std": diff[1], "seeds_std": own[1]}
    return out


def print_gains(found: dict[str, dict], baseline: str = "s4al+ random") -> None:
    if found:
        print(f"\nlast round, mIoU against {baseline} (paired by seed):")
    for method, g in found.items():
        print(
            f"  {method:>22s}: {g['gain']:+.1f} ± {g['gain_std']:.1f} "
            f"(the method's seeds: std {g['seeds_std']:.1f})"
        )


def plot(summary: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    full = next(r for r in summary if r["method"] == "full")
    ax.axhline(full["miou_pct"], color="black", lw=1, ls="--", label="fully supervised")
    ax.axhline(0.95 * full["miou_pct"], color="grey", lw=1, ls=":", label="95% of full")
    methods = list(dict.fromkeys(r["method"] for r in summary if r["method"] != "full"))
    for k, method in enumerate(methods):
        points = [r for r in summary if r["method"] == method]
        dodge = 0.06 * (k - (len(methods) - 1) / 2)  # side by side: error bars stay readable
        ax.errorbar(
            [p["labeled_pct"] + dodge for p in points],
            [p["miou_pct"] for p in points],
            yerr=[p["miou_pct_std"] for p in points],
            fmt="o-",
            capsize=3,
            label=method,
        )
    seeds = full["seeds"]
    ax.set_xlabel("labeled pixels (% of train pixels)")
    ax.set_ylabel(f"val mIoU (%), mean ± std of {seeds} seed{'s' * (seeds > 1)}")
    ax.set_title("Label efficiency on the synthetic street scenes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def dataset_facts(cfg) -> tuple[dict[str, float], float]:
    """Each class's share of the train split's ground-truth pixels, and how far colour alone
    goes: the val mIoU (%) of a nearest-class-mean-colour pixel classifier fitted on train (a
    task it solves is too easy to compare methods on)."""
    from s4al_ray.data.io import load_image, load_mask
    from s4al_ray.data.registry import load_dataset
    from s4al_ray.evaluate import mean_iou

    data = load_dataset(cfg.data, cfg.seed, log=lambda line: None)
    c = data.num_classes
    counts, colour_sums = np.zeros(c, np.int64), np.zeros((c, 3))
    for row in data.rows("train"):
        mask, image = load_mask(row["mask_uri"]).ravel(), load_image(row["image_uri"])
        valid = mask < c
        counts += np.bincount(mask[valid], minlength=c)
        for k in range(3):
            colour_sums[:, k] += np.bincount(
                mask[valid], weights=image.reshape(-1, 3)[valid, k], minlength=c
            )
    means = colour_sums / np.maximum(counts, 1)[:, None]
    confusion = np.zeros((c, c), np.int64)
    for row in data.rows("val"):
        mask, image = load_mask(row["mask_uri"]).ravel(), load_image(row["image_uri"])
        pixels = image.reshape(-1, 3).astype(np.float64)
        predicted = ((pixels[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
        valid = mask < c
        confusion += np.bincount(mask[valid] * c + predicted[valid], minlength=c * c).reshape(c, c)
    frequencies = dict(zip(data.classes, (counts / counts.sum()).tolist()))
    return frequencies, 100 * mean_iou(confusion)


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "runs/benchmarks/label_efficiency")
    parser.add_argument(
        "--methods",
        default="s4al+ active,s4al+ class-balanced,s4al+ random",
        help="comma-separated subset of: "
        + ", ".join(METHODS)
        + " (full is always run, unless --reuse holds it: every other figure is a share of it)",
    )
    parser.add_argument(
        "--reuse",
        help="an earlier label_efficiency.json of the same config and seeds: its methods that "
        "--methods does not name (full included) are reported from it instead of being rerun",
    )
    args = parser.parse_args()
    seeds = parse_seeds(parser, args.seeds)
    named = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "full"]
    unknown = [m for m in named if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    reused = reused_results(parser, args.reuse, seeds, named)
    chosen = [*(["full"] if "full" not in reused["methods"] else []), *named]
    common = shared_overrides(args)
    base = load_config(args.config, common)
    connect(base)
    # The reference trains as many steps in its one round as the others do over all rounds.
    methods = {label: METHODS[label] for label in chosen}
    if "full" in methods:
        methods["full"] = [*METHODS["full"], f"train.epochs={base.train.epochs * base.loop.rounds}"]
    # Seed by seed, so a stopped benchmark has whole seeds to show (and resumes the rest).
    results = {
        (label, seed): run_method(args.config, label, overrides, common, seed)
        for seed in seeds
        for label, overrides in methods.items()
    }
    frequencies, colour_miou = dataset_facts(base)
    classes = list(frequencies)
    rare = rarest_classes(frequencies)
    shares = ", ".join(f"{c} {100 * f:.2f}%" for c, f in frequencies.items())
    print(f"train pixels per class: {shares}")
    print(f"nearest-mean-colour pixel classifier: val mIoU {colour_miou:.1f}%")
    full_miou = {
        **{r["seed"]: r["miou_pct"] for r in reused["runs"] if r["method"] == "full"},
        **{s: 100 * results[("full", s)][-1]["val/miou"] for s in seeds if "full" in chosen},
    }
    rows = [*reused["runs"], *summarise(results, classes, full_miou)]
    summary = across_seeds(rows, classes)
    print_table(summary, rare)
    found = gains(rows)
    print_gains(found)
    acquiring = [m for m in chosen if m != "full"]
    mix = print_class_mix(
        base.storage, acquiring, seeds, classes, rare, reused["acquired_class_pct"]
    )
    os.makedirs(args.out, exist_ok=True)
    plot(summary, os.path.join(args.out, "label_efficiency.png"))
    with open(os.path.join(args.out, "label_efficiency.json"), "w") as handle:
        json.dump(
            {
                "seeds": seeds,
                "class_frequency": frequencies,
                "nearest_colour_miou_pct": colour_miou,
                "rarest": rare,
                "summary": summary,
                "gains_over_random": found,
                "acquired_class_pct": mix,
                "runs": rows,
            },
            handle,
            indent=1,
        )
    print(f"\ncurve: {args.out}/label_efficiency.png  numbers: {args.out}/label_efficiency.json")


if __name__ == "__main__":
    main()
