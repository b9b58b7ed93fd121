"""reproduce.py: the grid's table from finished runs, and a real tiny cell."""

import json

import pytest

import reproduce


def fake_run(folder, top, value):
    folder.mkdir(parents=True)
    metrics = {"top": top, f"mAP@{top}": value, "timings": {"train_seconds": 12.0}, "device": "CPU, tensorflow backend"}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_table_lists_measured_and_missing_cells_and_the_published_numbers(tmp_path, capsys):
    fake_run(tmp_path / "cifar10-dlbhc-dbr-12b", 1000, 0.5)
    assert reproduce.main(["--methods", "dbr", "dlbhc", "--bits", "12", "--out", str(tmp_path), "--table-only"]) == 0
    table = (tmp_path / reproduce.RESULTS_FILE).read_text()
    assert "| dbr | 12 | 0.5000 (mAP@1000) |" in table
    assert "| dlbhc | 12 | not measured |" in table
    assert "12: 0.8930, 32: 0.8972, 48: 0.8973" in table  # DLBHC's published row
    assert "DHN paper" not in table  # another protocol's numbers stay out
    assert table in capsys.readouterr().out


def test_offline_only_rows_say_so(tmp_path):
    reproduce.main(["--methods", "dnnh", "--bits", "16", "--protocol", "dlbhc", "--out", str(tmp_path), "--table-only"])
    assert "CUB-200 cannot be had offline here: not run" in (tmp_path / reproduce.RESULTS_FILE).read_text()


@pytest.mark.slow
def test_a_tiny_cell_runs_and_is_not_run_twice(tmp_path, tiny_tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--methods", "dlbhc", "--bits", "12", "--epochs", "1", "--data-dir", str(tiny_tree), "--out", "grid", "--", "--arch", "dbr", "-s", "0"]
    assert reproduce.main(argv) == 0
    run = tmp_path / "grid" / "cifar10-dlbhc-dlbhc-12b"
    first = (run / "metrics.json").read_text()
    assert "| dlbhc | 12 |" in (tmp_path / "grid" / reproduce.RESULTS_FILE).read_text()
    assert reproduce.main(argv) == 0
    assert (run / "metrics.json").read_text() == first


@pytest.mark.slow
def test_models_from_evaluates_another_grids_models_without_training(tmp_path, tiny_tree, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_argv = ["--methods", "dlbhc", "--bits", "12", "--epochs", "1", "--data-dir", str(tiny_tree), "--out", "trained", "--", "--arch", "dbr", "-s", "0"]
    assert reproduce.main(train_argv) == 0
    argv = ["--methods", "dlbhc", "--bits", "12", "--protocol", "dbr", "--models-from", "trained", "--out", "evaluated", "--", "-q", "8", "-s", "0"]
    assert reproduce.main(argv) == 0
    metrics = json.loads((tmp_path / "evaluated" / "cifar10-dbr-dlbhc-12b" / "metrics.json").read_text())
    assert metrics["protocol"] == "dbr" and metrics["timings"]["train_seconds"] == 0
    assert metrics["model_from"] == str(tmp_path / "trained" / "cifar10-dlbhc-dlbhc-12b")
    assert "(its model's)" in (tmp_path / "evaluated" / reproduce.RESULTS_FILE).read_text()
    with pytest.raises(SystemExit) as exit_info:  # no such cell among the trained ones
        reproduce.main([*argv[:3], "24", *argv[4:]])
    assert exit_info.value.code == 2 and "holds 0 finished cifar10 dlbhc 24-bit cells" in capsys.readouterr().err


def test_published_rows_follow_the_protocol_and_the_dataset(tmp_path):
    reproduce.main(["--methods", "dbr", "--bits", "12", "--protocol", "dbr", "--dataset", "mnist", "--out", str(tmp_path), "--table-only"])
    table = (tmp_path / reproduce.RESULTS_FILE).read_text()
    assert "12: 0.9800, 24: 0.9840, 32: 0.9840, 48: 0.9900" in table  # DeepBinaryRepre's MNIST row
    assert "0.6120" not in table  # its CIFAR-10 row stays out of an MNIST table
    assert "DLBHC" not in table
