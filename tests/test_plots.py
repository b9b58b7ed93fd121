"""Tests for plots/: each figure is written as a PNG, and bad input is refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli import fails_with
from plots import compare
from plots.pr_curve import plot_pr_curve
from plots.precision_at_k import plot_precision_at_k


def test_precision_at_k_writes_png(tmp_path):
    plot_precision_at_k([1.0, 0.5, 2 / 3], tmp_path / "p.png", title="tiny")
    with Image.open(tmp_path / "p.png") as image:
        assert image.format == "PNG" and image.size == (600, 400)


def test_pr_curve_writes_png(tmp_path):
    # The hand-worked curve of tests/test_evaluate.py: radii 0..4.
    plot_pr_curve([1 / 3, 2 / 9, 1 / 3, 1 / 3, 1 / 3], [1 / 6, 1 / 3, 1 / 2, 2 / 3, 1], tmp_path / "pr.png")
    with Image.open(tmp_path / "pr.png") as image:
        assert image.format == "PNG" and image.size == (600, 400)


def test_pr_curve_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"same length.* Received: precision\.shape=\(2,\), recall\.shape=\(3,\)"):
        plot_pr_curve([1, 0.5], [0, 0.5, 1], tmp_path / "pr.png")
    assert not (tmp_path / "pr.png").exists()


def fake_run(folder, method="dlbhc", bits=48, protocol="dlbhc", top=3, mean_ap=0.857):
    """A run folder holding only a hand-written `metrics.json`: `top` precision@k values, radii 0..4."""
    folder.mkdir()
    metrics = {
        "method": method, "arch": "speedrun", "bits": bits, "protocol": protocol, "dataset": "cifar10",
        "top": top, f"mAP@{top}": mean_ap, "mAP@all": 0.5,
        "precision_at_k": [1.0, 0.5, 2 / 3, 0.75][:top],
        "pr_curve": {"radius": [0, 1, 2, 3, 4], "precision": [1, 0.8, 0.6, 0.4, 0.3], "recall": [0.1, 0.3, 0.5, 0.8, 1]},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_compare_overlays_runs_with_labelled_legend(tmp_path):
    # Different `top`s: the precision@k curves have different lengths.
    first = fake_run(tmp_path / "a")
    second = fake_run(tmp_path / "b", method="dbr", bits=12, top=2, mean_ap=0.5)
    figure = compare.plot_comparison(compare.load_runs([first, second]), tmp_path / "fig.png", title="tiny")
    with Image.open(tmp_path / "fig.png") as image:
        assert image.format == "PNG" and image.size == (1200, 450)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["dlbhc speedrun 48 bits: mAP@3 0.857", "dbr speedrun 12 bits: mAP@2 0.500"]
    assert figure.get_suptitle() == "tiny\ncifar10, dlbhc protocol"
    assert [file.name for file in tmp_path.iterdir() if file.is_file()] == ["fig.png"]  # no temporary left


def test_compare_labels_each_run_by_what_sets_it_apart(tmp_path):
    runs = compare.load_runs([fake_run(tmp_path / "small"), fake_run(tmp_path / "large")])
    runs[1]["num_train"], runs[0]["num_train"] = 50_000, 5_000
    figure = compare.plot_comparison(runs, tmp_path / "fig.png")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["dlbhc speedrun 48 bits, 5,000 training images: mAP@3 0.857", "dlbhc speedrun 48 bits, 50,000 training images: mAP@3 0.857"]
    alike = compare.load_runs([fake_run(tmp_path / "first"), fake_run(tmp_path / "second")])
    assert [compare.label(run, alike) for run in alike] == ["dlbhc speedrun 48 bits, first: mAP@3 0.857", "dlbhc speedrun 48 bits, second: mAP@3 0.857"]


def test_compare_refuses_runs_of_different_protocols(tmp_path, capsys):
    runs = [fake_run(tmp_path / "a"), fake_run(tmp_path / "b", protocol="dhn")]
    stderr = fails_with(capsys, [*map(str, runs), "-o", str(tmp_path / "fig.png")], "runs of different protocols do not compare", main=compare.main)
    assert "'dlbhc'" in stderr and "'dhn'" in stderr
    assert stderr.count("\n") == 1 and stderr.startswith("compare.py: error: ")
    assert not (tmp_path / "fig.png").exists()


def test_compare_refuses_a_folder_without_metrics(tmp_path, capsys):
    (tmp_path / "unfinished").mkdir()
    argv = [str(fake_run(tmp_path / "a")), str(tmp_path / "unfinished"), "-o", str(tmp_path / "fig.png")]
    fails_with(capsys, argv, f"{tmp_path / 'unfinished'} has no metrics.json", main=compare.main)
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("malformed", "cannot read"),
        ("missing key", "lacks mAP@3, pr_curve.recall"),
        ("no output folder", "-o/--out: the folder"),
        ("no runs", "the following arguments are required: runs"),
    ],
)
def test_compare_bad_input_is_one_line(tmp_path, capsys, breakage, message):
    run = fake_run(tmp_path / "a")
    out, runs = tmp_path / "fig.png", [str(run)]
    metrics = json.loads((run / "metrics.json").read_text())
    if breakage == "malformed":
        (run / "metrics.json").write_text("{not json")
    elif breakage == "missing key":
        del metrics["mAP@3"], metrics["pr_curve"]["recall"]
        (run / "metrics.json").write_text(json.dumps(metrics))
    elif breakage == "no output folder":
        out = tmp_path / "absent" / "fig.png"
    else:
        runs = []
    stderr = fails_with(capsys, [*runs, "-o", str(out)], message, main=compare.main)
    assert stderr.count("\n") == 1 and "usage:" not in stderr
    assert not out.exists()


@pytest.mark.slow
def test_compare_runs_as_a_script(tmp_path):
    repo_root = Path(compare.__file__).resolve().parents[1]
    runs = [str(fake_run(tmp_path / "a")), str(fake_run(tmp_path / "b", bits=12))]
    completed = subprocess.run(
        [sys.executable, "plots/compare.py", *runs, "-o", str(tmp_path / "fig.png")],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    with Image.open(tmp_path / "fig.png") as image:
        assert image.format == "PNG"
