"""Choose among GPU recipe candidates on a validation split, then measure the choice on the test queries.

    KERAS_BACKEND=jax python bench/tune_recipe.py --data-dir ../shared/datasets/cifar10-jpeg.tar.gz --out-dir results/

Each candidate (`CANDIDATES`, or `--candidates` to run some of them) is a set of
`retrieval.py` flags on top of `--recipe fast`. It trains on the training images
less `--val-size` held-out ones (class-balanced), and is scored by mAP@1000 of
those held-out images as queries against the rest: the test queries are never
looked at while choosing. The candidate with the best validation mAP@1000 (ties
to the faster one) is then trained on the whole training split and measured on
the protocol's test queries at each of `--bits`, by `bench/train_bench.py`,
which prints per epoch and reports when mAP@1000 reached 0.90, 0.92 and 0.94.

Every run is a `bench/train_bench.py` subprocess (a fresh backend each time);
each report is appended as one JSON line to `OUT_DIR/reports.jsonl`, and a
summary table is printed at the end. On the GPU machine, prepare the Keras
wheels and the data with `../shared/tools/device-prep` and run with
`KERAS_BACKEND=jax`.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "train_bench.py"
# Flags on top of `--recipe fast`. Each is one hypothesis from issue 5's probes: the recipe as
# it is; the classifier head, whose softmax can use label smoothing; a 1.5x wider network.
CANDIDATES = {
    "fast": [],
    "fast-dlbhc": ["--method", "dlbhc"],
    "fast-wide": ["--width", "96"],
}
DEFAULT_VAL_SIZE = 5000
DEFAULT_BITS = (48, 12, 64)
VALIDATION_BITS = 48


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="offline CIFAR-10 copy (default: the keras.datasets download)")
    parser.add_argument("--out-dir", required=True, help="folder for reports.jsonl (created if missing)")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), help=f"candidates to compare, of {', '.join(CANDIDATES)} (default: all)")
    parser.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE, help="training images held out as validation queries (default: %(default)s)")
    parser.add_argument("--bits", type=int, nargs="+", default=list(DEFAULT_BITS), help="code lengths of the test measurement (default: 48 12 64)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one run may take (default: %(default)s)")
    parser.add_argument("extra", nargs="*", help="further retrieval.py flags for every run, after --, overriding the candidates' (e.g. a CPU smoke test: -- -e 1 --width 4)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.candidates if name not in CANDIDATES]
    if unknown:
        parser.error(f"--candidates must be among {', '.join(CANDIDATES)}, got {', '.join(unknown)}")
    for flag, value in (("--val-size", args.val_size), ("--timeout", args.timeout)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    for bits in args.bits:
        if not 8 <= bits <= 256:
            parser.error(f"--bits must be between 8 and 256, got {bits}")
    taken = [flag for flag in ("-l", "--bits", "--val-size", "--recipe") if flag in args.extra]
    if taken:
        parser.error(f"{taken[0]} after -- is this command's to set: use its own --bits and --val-size")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common = ["--recipe", "fast"] + (["--data-dir", args.data_dir] if args.data_dir else [])

    validation = {}
    for name in args.candidates:
        flags = [*common, *CANDIDATES[name], "-l", str(VALIDATION_BITS), "--val-size", str(args.val_size), *args.extra]
        # Only the final codes are compared: one evaluation, after the last epoch.
        validation[name] = run_bench(flags, ["--eval-every", "1000"], out_dir, f"validation {name}", args.timeout)
    chosen = max(validation, key=lambda name: (final_map(validation[name]), -validation[name]["train_seconds"]))
    tests = {bits: run_bench([*common, *CANDIDATES[chosen], "-l", str(bits), *args.extra], [], out_dir, f"test {chosen} {bits} bits", args.timeout) for bits in args.bits}

    print(f"\nvalidation ({args.val_size} held-out training images as queries, {VALIDATION_BITS} bits):")
    for name, report in validation.items():
        print(f"  {name:12s} {final_map_key(report)[6:]} {final_map(report):.4f}  training {report['train_seconds']:.1f} s{'  <- chosen' if name == chosen else ''}")
    print(f"test queries, candidate {chosen}:")
    for bits, report in tests.items():
        print(f"  {bits:3d} bits  {final_map_key(report)[6:]} {final_map(report):.4f}  training {report['train_seconds']:.1f} s "
              f"(compilation {report['compile_seconds']:.1f} s)  seconds to 0.90/0.92/0.94: {report['seconds_to']}")
    return 0


def run_bench(flags, bench_flags, out_dir, label, timeout):
    """Runs `train_bench.py` with `flags`; appends its report to `reports.jsonl` and returns it."""
    report_file = out_dir / "last_report.json"
    command = [sys.executable, str(BENCH), *bench_flags, "--json", str(report_file), *flags]
    print(f"== {label}: {' '.join(command[1:])}", flush=True)
    try:
        subprocess.run(command, check=True, timeout=timeout)
    except subprocess.CalledProcessError as error:
        sys.exit(f"tune_recipe.py: the {label} run failed with exit status {error.returncode} (its output is above)")
    except subprocess.TimeoutExpired:
        sys.exit(f"tune_recipe.py: the {label} run took longer than --timeout {timeout} s and was stopped")
    report = {"label": label, "flags": flags, **json.loads(report_file.read_text())}
    with open(out_dir / "reports.jsonl", "a") as reports:
        reports.write(json.dumps(report) + "\n")
    return report


def final_map(report):
    """The report's final mAP@k (k is 1000 on CIFAR-10, less on a database smaller than 1000)."""
    return report[final_map_key(report)]


def final_map_key(report):
    return next(key for key in report if key.startswith("final_mAP@"))


if __name__ == "__main__":
    sys.exit(main())
