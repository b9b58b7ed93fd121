"""Overlays the precision@k and precision-recall curves of several runs in one figure, as papers do.

    python plots/compare.py RUN [RUN ...] -o FIG.png [--title TEXT]

Each RUN is a run folder written by `retrieval.py`; its `metrics.json` gives the curves and the
legend entry (method, arch, bits and mAP@top). Curves measured under different protocols (or on
different datasets) do not compare, so such runs are refused. Runs with different `top` are fine:
their precision@k curves just have different lengths. A mistake ends with one line on stderr and
exit status 2, and the PNG is written atomically, so a failure never leaves a partial file.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

# Run as `python plots/compare.py`, only plots/ is on sys.path; rundir.py lives in the repo root.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
import rundir  # noqa: E402

PROG = "compare.py"
REQUIRED_KEYS = ("method", "arch", "bits", "protocol", "dataset", "top", "precision_at_k", "pr_curve")
PR_CURVE_KEYS = ("precision", "recall")  # one value per Hamming radius 0..L
FIGURE_SIZE = (12, 4.5)  # inches: two panels side by side


class CompareError(Exception):
    """Runs that cannot be compared, or a figure that cannot be written; one line, exit status 2."""


def load_runs(paths):
    """Reads each run folder's `metrics.json` and checks that the runs can be compared.

    Args:
        paths: run folders written by `retrieval.py`, at least one.

    Returns:
        One metrics dict per run, in the given order, each with `"run"` added: its folder.
    """
    if not paths:
        raise CompareError("give at least one run folder. Received: none")
    runs = []
    for path in map(Path, paths):
        metrics_path = path / rundir.METRICS_FILE
        if not metrics_path.is_file():
            raise CompareError(f"{path} has no {rundir.METRICS_FILE}: not a finished run folder")
        try:
            metrics = rundir.read_json(metrics_path)
        except (OSError, ValueError) as error:
            raise CompareError(f"cannot read {metrics_path}: {error}") from None
        if not isinstance(metrics, dict):
            raise CompareError(f"{metrics_path} must hold a JSON object. Received: {type(metrics).__name__}")
        missing = _missing_keys(metrics)
        if missing:
            raise CompareError(f"{metrics_path} lacks {', '.join(missing)}")
        runs.append({**metrics, "run": path})
    first = runs[0]
    for run in runs[1:]:
        for key in ("protocol", "dataset"):
            if run[key] != first[key]:
                raise CompareError(
                    f"runs of different {key}s do not compare: {first['run']} is {key} {first[key]!r}, "
                    f"{run['run']} is {key} {run[key]!r}"
                )
    return runs


def _missing_keys(metrics):
    """The keys a comparison needs that `metrics` lacks; those inside `pr_curve` as `pr_curve.recall`."""
    missing = [key for key in REQUIRED_KEYS if key not in metrics]
    if missing:
        return missing
    mean_ap_key = f"mAP@{metrics['top']}"
    missing = [] if mean_ap_key in metrics else [mean_ap_key]
    return missing + [f"pr_curve.{key}" for key in PR_CURVE_KEYS if key not in metrics["pr_curve"]]


# What else can set a run apart, beside its method, arch and bits, and how its legend says so.
DISTINGUISHING = (("num_train", "{:,} training images"), ("epochs_trained", "{} epochs"), ("seed", "seed {}"), ("recipe", "{} recipe"))


def label(run, runs=()):
    """The legend entry of a run among `runs`: what it is, what sets it apart from them, its mAP.

    Method, arch and bits always; then each of `DISTINGUISHING` on which the runs differ;
    the run's folder name where nothing tells it apart.

    >>> runs = [{"method": "dlbhc", "arch": "speedrun", "bits": 48, "top": 10, "mAP@10": 0.5, "num_train": n, "run": Path("a")} for n in (5000, 50000)]
    >>> label(runs[0], runs)
    'dlbhc speedrun 48 bits, 5,000 training images: mAP@10 0.500'
    """
    top = run["top"]
    base = f"{run['method']} {run['arch']} {run['bits']} bits"
    differing = [template.format(run[key]) for key, template in DISTINGUISHING
                 if key in run and len({str(other.get(key)) for other in runs}) > 1]
    identical = len(runs) > 1 and not differing and len({(other["method"], other["arch"], other["bits"]) for other in runs}) == 1
    extras = differing or ([run["run"].name] if identical else [])
    return f"{', '.join([base, *extras])}: mAP@{top} {run[f'mAP@{top}']:.3f}"


def plot_comparison(runs, path, title=""):
    """Draws every run's precision@k and precision-recall curves on two shared panels; saves a PNG.

    Args:
        runs: metrics dicts from `load_runs`, all of one protocol and dataset.
        path: where to write the figure; written under a temporary name, then renamed.
        title: first line of the figure title; the second names the protocol and dataset.
            Defaults to `""`: only the protocol and dataset.

    Returns:
        The (closed) matplotlib figure; its first axes hold the legend.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise CompareError(f"-o/--out: the folder {path.parent} does not exist")
    figure, (at_k_axes, pr_axes) = plt.subplots(1, 2, figsize=FIGURE_SIZE, dpi=100)
    for run in runs:
        precision_at_k = run["precision_at_k"]
        at_k_axes.plot(range(1, len(precision_at_k) + 1), precision_at_k, linewidth=1.5, label=label(run, runs))
        curve = run["pr_curve"]
        pr_axes.plot(curve["recall"], curve["precision"], marker="o", markersize=3, linewidth=1.5)
    longest = max(len(run["precision_at_k"]) for run in runs)
    at_k_axes.set(xlabel="k (number of retrieved images)", ylabel="precision@k", xlim=(1, max(longest, 2)), ylim=(0, 1.02))
    pr_axes.set(xlabel="recall (within Hamming radius r = 0..L)", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    for axes in (at_k_axes, pr_axes):
        axes.grid(alpha=0.3)
    at_k_axes.legend(loc="lower left", fontsize=8)
    subtitle = f"{runs[0]['dataset']}, {runs[0]['protocol']} protocol"
    figure.suptitle(f"{title}\n{subtitle}" if title else subtitle)
    figure.tight_layout()
    try:
        with rundir.atomic_path(path) as temporary:
            figure.savefig(temporary, format="png")
    except OSError as error:
        raise CompareError(f"cannot write {path}: {error}") from None
    finally:
        plt.close(figure)
    return figure


def build_parser():
    """The argument parser; its errors, like the comparison's, are one line and exit status 2."""
    parser = argparse.ArgumentParser(prog=PROG, description="Overlay the retrieval curves of several runs in one PNG.")
    parser.add_argument("runs", nargs="+", help="run folders written by retrieval.py, all of one protocol")
    parser.add_argument("-o", "--out", required=True, help="the PNG to write; its folder must exist")
    parser.add_argument("--title", default="", help="first line of the figure title (default: none)")
    parser.error = lambda message: parser.exit(2, f"{PROG}: error: {message}\n")  # no usage block
    return parser


def main(argv=None):
    """Command-line entry point; returns the exit status (0 done, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plot_comparison(load_runs(args.runs), args.out, title=args.title)
    except CompareError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
