"""What each trick of a recipe is worth: validation mAP with one trick changed at a time.

    python bench/ablate_recipe.py --data-dir ../shared/datasets/cifar10-jpeg.tar.gz --out-dir runs/ablation -- -n 5000 -e 5
    python bench/ablate_recipe.py --recipe airbench --data-dir ../shared/datasets/cifar10-jpeg.tar.gz --out-dir runs/ablation-airbench -- -n 20000 -e 4

trains the recipe (`--recipe`, the speed-run one by default) once as it is and once per entry of its
`ABLATIONS` (the `retrieval.py` flags that take one trick away, or add one it leaves out), each on the training images
less `--val-size` held-out ones, and scores mAP@1000 of the held-out images as
queries against the rest: the test queries are never looked at. Flip
test-time augmentation is measured on the full recipe's own model
(`bench/tta_bench.py`), without training again.

Each run is a `bench/train_bench.py` subprocess (a fresh backend each time);
its report is appended as one JSON line to `OUT_DIR/reports.jsonl`, and a run
whose report is already there is not run again, so a stopped ablation resumes
where it stopped. The last output is a Markdown table, one line per trick changed.
"""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import options  # noqa: E402  (after the path: the bench runs from anywhere)
import vocabulary  # noqa: E402

BENCH = Path(__file__).resolve().parent
# Each trick of the speed-run recipe and the flags that take it away (or, for the network, swap
# it for the residual CNN of the classic recipe); the last three add what the recipe leaves out at
# classroom scale, or swap a setting for the one it replaced.
SPEEDRUN_ABLATIONS = {
    "without the patch-whitened, identity-initialised network (residual CNN instead)": ["--arch", "resnet", "--recipe", "speedrun"],
    "without the 64x rate of the batch norm biases": ["--norm-bias-lr-scale", "1"],
    "without label smoothing": ["--label-smoothing", "0"],
    "without the triangular schedule (cosine instead)": ["--schedule", "cosine"],
    "weight decay 5e-5 instead of 1e-2": ["--weight-decay", "5e-5"],
    "with lookahead (--weight-averaging)": ["--weight-averaging"],
    "with 2-pixel shifts (light-crop-flip)": ["--augment", "light-crop-flip"],
}
# Each detail of the airbench94_muon port, set back to the speedrun recipe's choice.
AIRBENCH_ABLATIONS = {
    "Nesterov SGD on the filters instead of Muon": ["--optimizer", "sgd"],
    "the triangular schedule instead of the linear decay": ["--schedule", "triangular"],
    "random flips instead of alternating ones": ["--flip", "random"],
    "padded pooling instead of floor pooling": ["--pooling", "same"],
    "batch norm epsilon 1e-3 instead of 1e-12": ["--batch-norm-epsilon", "1e-3"],
    "He initialisation instead of PyTorch's": ["--init", "he"],
    "whitening epsilon on pixels instead of standardised ones": ["--whitening", "pixels"],
    "the whitening bias trained every epoch": ["--whitening-bias-epochs", "0"],
    "batches of 1,000 instead of 2,000": ["--batch-size", "1000"],
}
ABLATIONS = {"speedrun": SPEEDRUN_ABLATIONS, "airbench": AIRBENCH_ABLATIONS}
BASELINE = "the recipe as it is"
TTA = "the recipe's own model, encoded without test-time augmentation"
DEFAULT_VAL_SIZE = 2000
BITS = 48


def main(argv=None):
    parser = options.ArgumentParser(prog="ablate_recipe.py", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=tuple(ABLATIONS), default="speedrun", help="the recipe whose tricks are taken away one at a time (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="offline CIFAR-10 copy (default: the keras.datasets download)")
    parser.add_argument("--out-dir", required=True, help="folder for the runs and reports.jsonl (created if missing; rerun to resume)")
    parser.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE, help="training images held out as validation queries (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one run may take (default: %(default)s)")
    parser.add_argument("extra", nargs="*", help="further retrieval.py flags for every run, after -- (e.g. the scale: -- -n 5000 -e 5)")
    args = parser.parse_args(argv)
    for flag, value in (("--val-size", args.val_size), ("--timeout", args.timeout)):
        if value < 1:
            parser.error(f"--{flag.lstrip('-')} must be at least 1, got {value}")
    taken = [flag for flag in ("-l", "--bits", "--val-size", "--out", "--recipe") if flag in args.extra]
    if taken:
        parser.error(f"{taken[0]} after -- is this command's to set")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common = ["-l", str(BITS), "--val-size", str(args.val_size), "--recipe", args.recipe,
              *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra]
    done = read_reports(out_dir / "reports.jsonl")
    reports = {}
    for label, flags in {BASELINE: [], **ABLATIONS[args.recipe]}.items():
        reports[label] = done.get(label) or run_bench(label, [*common, *flags], out_dir, args.timeout)
    reports[TTA] = done.get(TTA) or run_tta_bench(out_dir, args.timeout)
    print(table(reports, args.val_size, [f"--recipe {args.recipe}", *args.extra]))
    return 0


def run_dir(out_dir, label):
    return out_dir / ("baseline" if label == BASELINE else "".join(c if c.isalnum() else "-" for c in label.split(" (")[0]))


def run_bench(label, flags, out_dir, timeout):
    """Trains one variant through `train_bench.py` (scored once, after the last epoch); records its report."""
    report_file = out_dir / "last_report.json"
    command = [sys.executable, str(BENCH / "train_bench.py"), "--eval-every", "1000", "--json", str(report_file),
               *flags, "--out", str(run_dir(out_dir, label)), "--overwrite"]
    run(label, command, timeout)
    report = json.loads(report_file.read_text())
    key = next(key for key in report if key.startswith("final_mAP@"))
    return record(out_dir, {"label": label, "flags": flags, "mAP": report[key], "k": key.split("@")[1],
                            "train_seconds": report["train_seconds"]})


def run_tta_bench(out_dir, timeout):
    """The full recipe's model encoded without test-time augmentation."""
    command = [sys.executable, str(BENCH / "tta_bench.py"), str(run_dir(out_dir, BASELINE))]
    report = json.loads(run(TTA, command, timeout, capture=True).strip().splitlines()[-1])
    key = next(key for key in report[vocabulary.NO_TTA] if key.startswith("mAP@"))
    return record(out_dir, {"label": TTA, "flags": ["--no-tta"], "mAP": report[vocabulary.NO_TTA][key], "k": key.split("@")[1], "train_seconds": None})


def run(label, command, timeout, capture=False):
    """Runs one bench subprocess; returns its standard output if `capture`, else lets it print."""
    print(f"== {label}: {' '.join(command[1:])}", flush=True)
    try:
        return subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.PIPE if capture else None, text=True).stdout
    except subprocess.CalledProcessError as error:
        sys.exit(f"ablate_recipe.py: the run '{label}' failed with exit status {error.returncode} (its output is above)")
    except subprocess.TimeoutExpired:
        sys.exit(f"ablate_recipe.py: the run '{label}' took longer than --timeout and was stopped")


def read_reports(path):
    if not path.is_file():
        return {}
    return {report["label"]: report for report in map(json.loads, path.read_text().splitlines())}


def record(out_dir, report):
    with open(out_dir / "reports.jsonl", "a") as reports:
        reports.write(json.dumps(report) + "\n")
    return report


def table(reports, val_size, extra):
    """The Markdown ablation table: each variant's validation mAP and its change from the full recipe."""
    baseline = reports[BASELINE]["mAP"]
    k = reports[BASELINE]["k"]
    lines = [f"Validation mAP@{k} ({val_size} held-out training images as queries, {BITS} bits, {' '.join(extra) or 'default scale'}):", "",
             f"| variant | mAP@{k} | change | training s |", "|---|---|---|---|"]
    for label, report in reports.items():
        change = "" if label == BASELINE else f"{report['mAP'] - baseline:+.4f}"
        seconds = "(same model)" if report["train_seconds"] is None else f"{report['train_seconds']:.0f}"
        lines.append(f"| {label} | {report['mAP']:.4f} | {change} | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
