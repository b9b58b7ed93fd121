"""What the figures of a finished run folder are drawn from: its config, metrics and `codes.h5`.

`python plots/retrieved.py RUN` and its siblings import this first: it puts the repository
root on `sys.path`, so they run from anywhere, and refuses a folder without a finished run.
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
import rundir  # noqa: E402


class RunFilesError(Exception):
    """A folder that holds no finished run; one line, exit status 2."""


def read_run(folder):
    """`(config, metrics, codes)` of a finished run folder; `codes` as `rundir.read_codes` gives them."""
    folder = Path(folder)
    missing = [name for name in (rundir.CONFIG_FILE, rundir.METRICS_FILE, rundir.CODES_FILE) if not (folder / name).is_file()]
    if missing:
        raise RunFilesError(f"{folder} has no {missing[0]}: not a finished run folder")
    try:
        return rundir.read_json(folder / rundir.CONFIG_FILE), rundir.read_json(folder / rundir.METRICS_FILE), rundir.read_codes(folder / rundir.CODES_FILE)
    except (OSError, ValueError) as error:
        raise RunFilesError(f"cannot read the run in {folder}: {error}") from None


def mean_ap(metrics):
    """`(k, mAP@k)` of a run's metrics."""
    return metrics["top"], metrics[f"mAP@{metrics['top']}"]


def redraw_main(argv, prog, description, default_name, draw):
    """The command line of a figure drawn from a finished run alone: `prog RUN [-o PATH]`; returns the exit status.

    `draw(config, metrics, codes, out)` writes the figure; a folder without a run is one line, exit status 2.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument("-o", "--out", default=None, help=f"the PNG to write (default: RUN/{default_name})")
    args = parser.parse_args(argv)
    try:
        config, metrics, codes = read_run(args.run)
    except RunFilesError as error:
        parser.exit(2, f"{prog}: error: {error}\n")
    out = Path(args.out or Path(args.run) / default_name)
    draw(config, metrics, codes, out)
    print(f"wrote {out}")
    return 0
