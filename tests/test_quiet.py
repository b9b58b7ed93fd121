"""Tests for quiet.py and a run's first lines: no line of TensorFlow's C++ logging before the first epoch."""

import subprocess
import sys
from pathlib import Path

import pytest

import quiet

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("line, notice", [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
    ("I0000 00:00:1796689007.169893    2709 port.cc:153] oneDNN custom operations are on. You may see", True),
    ("E0000 00:00:1796689062.216623    3098 util.cc:131] oneDNN supports DT_INT64 only on platforms with AVX-512.", True),
    ("W0000 gpu_device.cc:2344] Cannot dlopen some GPU libraries. Skipping registering GPU devices...", False),
    ("Traceback (most recent call last):", False),
])
def test_only_the_start_up_notices_are_filtered(line, notice):
    assert bool(quiet.NOTICES.search(line)) is notice


@pytest.mark.slow
def test_a_runs_output_before_its_first_epoch_has_no_tensorflow_log_line(tiny_tree, tmp_path):
    command = [sys.executable, "retrieval.py", "--data-dir", str(tiny_tree), "--arch", "dbr", "-l", "12", "-e", "2", "--out", str(tmp_path / "run")]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    before_training = (completed.stderr + completed.stdout).split("Epoch 1/2")[0]
    assert "Epoch 1/2" in completed.stdout
    for trace in ("I0000", "E0000", "W0000", "absl", "oneDNN"):
        assert trace not in before_training, before_training
    lines = [line for line in completed.stdout.splitlines() if not line.startswith("note:")]
    assert lines[0].startswith("cifar10: 120 training images, 120 database images, 32 test queries"), lines[0]
    assert lines[1].startswith("dbr, 12 bits, dbr network, dbr recipe: 2 epochs of batches of 32, adadelta; training on CPU"), lines[1]
    assert lines[-1].startswith(f"results in {tmp_path / 'run'}: config.json") and "retrieved.png" in lines[-1]
