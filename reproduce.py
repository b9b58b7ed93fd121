"""Run rows of the methods x bits x protocol grid and tabulate them beside the published numbers.

    python reproduce.py --methods dbr dlbhc --bits 12 48 --protocol dlbhc \\
        --data-dir ../shared/datasets/cifar10-jpeg.tar.gz
    python reproduce.py --methods dhn --bits 48 --protocol dhn --table-only

Each cell is one `retrieval.py` run, in its own process (paths relative to the current folder), into
`<out>/<dataset>-<protocol>-<method>-<bits>b/`; a cell whose run already finished is
not run again, and an interrupted one is resumed, so the grid can be stopped and
restarted. `--models-from` evaluates the models of another grid's finished cells instead of
training (`retrieval.py --model-from`): `cifar10-1` trains on the very images `dhn` does, so

    python reproduce.py --methods dlbhc --bits 48 --protocol cifar10-1 --models-from runs/table-dhn \\
        --data-dir ../shared/datasets/cifar10-jpeg.tar.gz

only encodes and scores. `results.md` in `<out>` then lists every cell (measured, or "not measured")
with the command that reproduces it, followed by the seeds' published numbers for the
same protocol. Published rows whose data cannot be had offline say so.
"""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import options
import protocols
import rundir

REPO = Path(__file__).resolve().parent
RESULTS_FILE = "results.md"

# The seeds' published mAP, by (protocol, dataset): source, network, {bits: mAP}, and a note.
PUBLISHED = [
    ("dlbhc", "cifar10", "DLBHC (Lin et al., CVPRW 2015), mAP@1000", "AlexNet, ImageNet-pretrained", {12: 0.8930, 32: 0.8972, 48: 0.8973}, ""),
    ("dhn", "cifar10", "DHN paper (Zhu et al., AAAI 2016), mAP@all", "AlexNet, ImageNet-pretrained", {12: 0.555, 24: 0.594, 32: 0.603, 48: 0.621}, ""),
    ("dhn", "cifar10", "DHN PyTorch port, mAP@all", "AlexNet, ImageNet-pretrained", {16: 0.7275, 32: 0.7353, 48: 0.7302, 128: 0.7386}, ""),
    ("dbr", "cifar10", "DeepBinaryRepre (Lu et al. 2017) Table 3, DBR, mAP@5000 of 1,000 queries", "its own CNN, from scratch", {12: 0.612, 24: 0.648, 32: 0.658, 48: 0.680}, ""),
    ("dbr", "cifar10", "DeepBinaryRepre Table 3, DBR-v3", "its deeper CNN, from scratch", {12: 0.733, 24: 0.761, 32: 0.768, 48: 0.769}, "not built here"),
    ("dbr", "cifar10", "DeepBinaryRepre Table 3, DHN (quoted)", "AlexNet, ImageNet-pretrained", {12: 0.555, 24: 0.594, 32: 0.603, 48: 0.621}, "the DHN paper's figures under its own protocol (mAP@all)"),
    ("dbr", "cifar10", "DeepBinaryRepre Table 3, DNNH (quoted)", "AlexNet, ImageNet-pretrained", {12: 0.552, 24: 0.566, 32: 0.558, 48: 0.581}, "as quoted by the DHN paper (mAP@all)"),
    ("dbr", "mnist", "DeepBinaryRepre Table 3, DBR, mAP@5000 of 1,000 queries", "its own CNN, from scratch", {12: 0.980, 24: 0.984, 32: 0.984, 48: 0.990}, ""),
    ("dnnh", "cub200", "DNNH (Lai et al., CVPR 2015) port, ResNet-18", "ResNet-18, ImageNet-pretrained", {16: 0.6384, 64: 0.7059}, "CUB-200 cannot be had offline here: not run"),
    ("dnnh", "stanford_dogs", "DNNH port, ResNet-18", "ResNet-18, ImageNet-pretrained", {16: 0.7127, 64: 0.7615}, "Stanford Dogs cannot be had offline here: not run"),
]


def build_parser():
    parser = options.ArgumentParser(prog="reproduce.py", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["dbr", "dlbhc"], help="methods to run (default: %(default)s)")
    parser.add_argument("--bits", nargs="+", type=int, default=[12, 48], help="code lengths (default: %(default)s)")
    parser.add_argument("--protocol", default="dlbhc", help="evaluation protocol (default: %(default)s)")
    parser.add_argument("--dataset", default="cifar10", help="dataset (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="offline dataset copy (default: download)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the recipe's, as retrieval.py's -e)")
    parser.add_argument("--out", default="runs/reproduce", help="folder of the grid's runs and results.md (default: %(default)s)")
    parser.add_argument("--models-from", default=None, help="a grid folder of finished cells whose trained models this grid evaluates instead of training (retrieval.py --model-from): e.g. the dhn grid's for cifar10-1, which trains on the same images (default: train every cell)")
    parser.add_argument("--table-only", action="store_true", help="write results.md from the runs already there; train nothing")
    parser.add_argument("extra", nargs="*", help="further retrieval.py arguments, after --")
    return parser


def cell_command(args, method, bits, out):
    """The `retrieval.py` command line of one cell: a training run, or with `--models-from` an evaluation of a trained model."""
    if args.models_from:
        command = ["retrieval.py", "--protocol", args.protocol, "--model-from", str(trained_cell(args, method, bits)), "--out", str(out), *args.extra]
    else:
        command = ["retrieval.py", "--dataset", args.dataset, "--protocol", args.protocol, "--method", method,
                   "-l", str(bits), *(["-e", str(args.epochs)] if args.epochs is not None else []), "--out", str(out), *args.extra]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return command


def trained_cell(args, method, bits):
    """The one finished cell of `method` at `bits` on the dataset in `--models-from`, under whichever protocol it trained."""
    found = [cell for cell in sorted(Path(args.models_from).glob(f"{args.dataset}-*-{method}-{bits}b")) if (cell / rundir.MODEL_FILE).is_file()]
    if len(found) != 1:
        raise CellError(f"--models-from {args.models_from} holds {len(found)} finished {args.dataset} {method} {bits}-bit cells, not one")
    return found[0]


class CellError(Exception):
    """A cell that cannot be set up as asked; the grid stops with exit status 2."""


def run_cell(command, out):
    """Runs one cell, or resumes it if it was interrupted. Returns its metrics, or None if it failed."""
    argv = ["retrieval.py", "--resume", "--out", str(out)] if (out / "config.json").is_file() else command
    status = subprocess.run([sys.executable, str(REPO / argv[0]), *argv[1:]]).returncode
    if status != 0:
        print(f"reproduce.py: python {shlex.join(command)} failed with status {status}", file=sys.stderr)
        return None
    return json.loads((out / "metrics.json").read_text())


def is_method_only_row(row, methods):
    """Whether `row` is a method's published figure on data this project cannot fetch (keyed by the method, not a protocol)."""
    return row[0] in methods and row[0] not in protocols.PROTOCOLS


def results_table(args, cells):
    """Markdown: our measured cells, then the published numbers for this protocol and dataset."""
    lines = [f"## {args.dataset}, protocol {args.protocol}", "",
             "| method | bits | mAP | query accuracy | train s | device | command |", "|---|---|---|---|---|---|---|"]
    for (method, bits), (command, metrics) in cells.items():
        if metrics is None:
            lines.append(f"| {method} | {bits} | not measured | | | | `python {shlex.join(command)}` |")
            continue
        key = f"mAP@{metrics['top']}"
        accuracy = f"{metrics['query_accuracy']:.4f}" if "query_accuracy" in metrics else ""
        trained = f"{metrics['model_train_seconds']:.0f} (its model's)" if "model_from" in metrics else f"{metrics['timings']['train_seconds']:.0f}"
        lines.append(f"| {method} | {bits} | {metrics[key]:.4f} ({key}) | {accuracy} | {trained} "
                     f"| {metrics['device']} | `python {shlex.join(command)}` |")
    published = [row for row in PUBLISHED if (row[0], row[1]) == (args.protocol, args.dataset) or is_method_only_row(row, args.methods)]
    if published:
        lines += ["", "Published:", "", "| source | data | network | mAP by bits | note |", "|---|---|---|---|---|"]
        for _, dataset, source, network, by_bits, note in published:
            values = ", ".join(f"{bits}: {value:.4f}" for bits, value in by_bits.items())
            lines.append(f"| {source} | {dataset} | {network} | {values} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Runs the grid's missing cells and writes results.md; returns the exit status.

    0 done; 2 bad input (a `--models-from` folder without the cell's model); 130 interrupted (Ctrl-C): the finished cells are kept, and the same
    command runs the rest, an unfinished cell resuming from its last finished epoch.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    out_root = Path(args.out)
    with parser.exit_statuses(CellError, kept=lambda: f"the finished cells in {out_root} are kept: run the same command again to go on"):
        out_root.mkdir(parents=True, exist_ok=True)
        table = results_table(args, run_grid(args, out_root))
        with rundir.atomic_path(out_root / RESULTS_FILE) as temporary:
            temporary.write_text(table)
    print(table)
    return 0


def run_grid(args, out_root):
    """Each cell's command and metrics (None where it did not finish), running the cells not yet done."""
    cells = {}
    for method in args.methods:
        for bits in args.bits:
            out = out_root / f"{args.dataset}-{args.protocol}-{method}-{bits}b"
            command = cell_command(args, method, bits, out)
            metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else None
            if metrics is None and not args.table_only:
                metrics = run_cell(command, out)
            cells[(method, bits)] = (command, metrics)
    return cells


if __name__ == "__main__":
    sys.exit(main())
