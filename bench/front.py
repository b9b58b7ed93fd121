"""The half-hour front: validation mAP against training minutes for the candidate recipes, as a table and a figure.

    python bench/front.py runs/val/airbench-full runs/val/airbench-e7

adds each finished run folder (trained with `--val-size`: its queries are
held-out training images, never the test split) to the record
`bench/results/front.json` (one entry per folder name; a run added again
replaces its entry), then draws every recorded candidate as a point, training
minutes against validation mAP@k, with the budget's line (`--budget-minutes`),
into `docs/figures/minutes-vs-map.png`, and prints the Markdown table beside it
with the best candidate within the budget. Entries measured before this script
existed carry their source instead of a run folder.
"""

import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import options  # noqa: E402  (after the path: the bench runs from anywhere)
import rundir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "bench" / "results" / "front.json"
FIGURE = ROOT / "docs" / "figures" / "minutes-vs-map.png"
BUDGET_MINUTES = 30
# What tells two candidates apart, in the order their label names it.
LABEL_KEYS = ("recipe", "optimizer", "width", "epochs", "batch_size")


def main(argv=None):
    parser = options.ArgumentParser(prog="front.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="finished validation run folders to add to the record")
    parser.add_argument("--record", default=str(RECORD), help="the JSON record of candidates (default: bench/results/front.json)")
    parser.add_argument("--figure", default=str(FIGURE), help="where the figure goes (default: docs/figures/minutes-vs-map.png)")
    parser.add_argument("--budget-minutes", type=float, default=BUDGET_MINUTES, help="the training budget (default: %(default)s)")
    args = parser.parse_args(argv)
    record = Path(args.record)
    entries = json.loads(record.read_text()) if record.is_file() else {}
    for run in args.runs:
        try:
            name, entry = candidate(Path(run))
        except (OSError, ValueError, KeyError) as error:
            parser.error(f"{run}: {error}")
        entries[name] = entry
    if not entries:
        parser.error("no candidates: name finished validation run folders")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(entries, indent=1) + "\n")
    draw(entries, Path(args.figure), args.budget_minutes)
    print(table(entries, args.budget_minutes))
    return 0


def candidate(run):
    """A run folder's entry: its settings, training seconds and validation mAP; refuses a run scored on test queries."""
    metrics = rundir.read_json(run / rundir.METRICS_FILE)
    config = rundir.read_json(run / rundir.CONFIG_FILE)
    if metrics.get("query_source") != "validation":
        raise ValueError("its queries are the test split: candidates are compared on validation (--val-size) only")
    top = metrics["top"]
    return run.name, {
        **{key: config.get(key) for key in LABEL_KEYS},
        "bits": metrics["bits"],
        "train_seconds": round(metrics["timings"]["train_seconds"], 1),
        "mAP": metrics[f"mAP@{top}"],
        "k": top,
        "query_accuracy": metrics.get("query_accuracy"),
        "num_train": metrics["num_train"],
        "date": datetime.date.fromtimestamp((run / rundir.METRICS_FILE).stat().st_mtime).isoformat(),
        "commit": metrics.get("git_commit"),
        "source": f"run folder {run.name}, commit {str(metrics.get('git_commit'))[:7]}",
    }


def label(entry):
    """'airbench muon w64 e8 b2000': what sets a candidate apart."""
    parts = {"recipe": "{}", "optimizer": "{}", "width": "w{}", "epochs": "e{}", "batch_size": "b{}"}
    return " ".join(parts[key].format(entry[key]) for key in LABEL_KEYS if entry.get(key) is not None)


def best_within(entries, budget_minutes):
    """The name of the candidate with the highest mAP trained within the budget, or None."""
    within = {name: entry for name, entry in entries.items() if entry["train_seconds"] <= 60 * budget_minutes}
    return max(within, key=lambda name: within[name]["mAP"]) if within else None


def table(entries, budget_minutes):
    best = best_within(entries, budget_minutes)
    lines = ["| candidate | training min | validation mAP | query accuracy | source |", "|---|---|---|---|---|"]
    for name, entry in sorted(entries.items(), key=lambda item: item[1]["train_seconds"]):
        mark = "**" if name == best else ""
        accuracy = "" if entry.get("query_accuracy") is None else f"{entry['query_accuracy']:.4f}"
        lines.append(f"| {label(entry)} | {entry['train_seconds'] / 60:.1f} | {mark}{entry['mAP']:.4f}{mark} | {accuracy} | {entry['source']} |")
    lines.append("")
    lines.append(f"Best within {budget_minutes:g} minutes: {label(entries[best]) if best else 'none'}")
    return "\n".join(lines)


def draw(entries, path, budget_minutes):
    """Training minutes against validation mAP, one labelled point per candidate, the budget as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    best = best_within(entries, budget_minutes)
    for name, entry in entries.items():
        minutes = entry["train_seconds"] / 60
        axes.scatter(minutes, entry["mAP"], color="tab:red" if name == best else "tab:blue", zorder=3)
        axes.annotate(label(entry), (minutes, entry["mAP"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    axes.axvline(budget_minutes, color="grey", linestyle="--", label=f"{budget_minutes:g}-minute budget")
    longest = max([budget_minutes, *(entry["train_seconds"] / 60 for entry in entries.values())])
    axes.set_xlim(0, longest * 1.35)  # room for the labels right of the points
    ks = {entry["k"] for entry in entries.values()}
    axes.set_xlabel("training minutes (2-core CPU)")
    axes.set_ylabel(f"validation mAP@{ks.pop() if len(ks) == 1 else 'k'}")
    axes.set_title("The half-hour front: 48-bit codes, CIFAR-10, from scratch")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with rundir.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    pyplot.close(figure)


if __name__ == "__main__":
    sys.exit(main())
