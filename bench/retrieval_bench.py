"""End-to-end quality and time targets of `retrieval.py`, measured as a user would run it.

    python bench/retrieval_bench.py classroom --data-dir ../shared/datasets/cifar10-jpeg.tar.gz
    python bench/retrieval_bench.py full --data-dir ../shared/datasets/cifar10-jpeg.tar.gz

`classroom` runs `retrieval.py -n 5000 -e 5` (target: under 60 s end to end on a 2-core
CPU, mAP@1000 of at least 0.60); `full` runs `retrieval.py -l 48` (the default recipe's epochs,
the half hour of training) with all 10,000 test queries against the 50,000 training images
(target: mAP@1000 of at least 0.92). The wall time
is that of the whole command, Python start-up and data loading included; the run's own
`metrics.json` splits it into data, training, encoding and evaluation. Extra arguments
after `--` go to `retrieval.py` unchanged. Prints one JSON line with the figures.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import options  # noqa: E402  (after the path: the bench runs from anywhere)

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "classroom": {"argv": ["-n", "5000", "-e", "5"], "max_seconds": 60, "min_map": 0.60},
    "full": {"argv": ["-l", "48"], "max_seconds": None, "min_map": 0.92},
}


def parse_arguments(argv):
    """The bench's own arguments from `argv`, with `extra`: those after the first `--`, unchanged.

    argparse cannot take them as a positional list: `preset` and a `nargs="*"` list both
    fill at the preset's name, and arguments after a later `--` are refused.
    """
    cut = argv.index("--") if "--" in argv else len(argv)
    own, extra = argv[:cut], argv[cut + 1 :]
    parser = options.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Arguments after -- go to retrieval.py unchanged."
    )
    parser.add_argument("preset", choices=tuple(PRESETS))
    parser.add_argument("--data-dir", default=None, help="offline dataset copy (default: keras.datasets download)")
    args = parser.parse_args(own)
    args.extra = extra
    return args


def main(argv=None):
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    preset = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        command = [sys.executable, str(REPO / "retrieval.py"), *preset["argv"], "-s", "0", "--out", str(out), *args.extra]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO)
        wall = time.perf_counter() - started
        metrics = json.loads((out / "metrics.json").read_text())
    top = metrics["top"]
    report = {
        "preset": args.preset,
        "command": " ".join(["python retrieval.py", *command[2:]]).replace(str(out), "RUN"),
        "wall_seconds": round(wall, 1),
        f"mAP@{top}": round(metrics[f"mAP@{top}"], 4),
        "timings": metrics["timings"],
        "device": metrics["device"],
        "time_target_met": preset["max_seconds"] is None or wall < preset["max_seconds"],
        "map_target_met": metrics[f"mAP@{top}"] >= preset["min_map"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
