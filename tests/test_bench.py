"""Tests for the bench/ scripts: each runs end to end on tiny data, resumes where it says so, and refuses bad flags with exit status 2."""

import importlib.util
import json
from pathlib import Path

import keras
import pytest

import options
import recipes
import retrieval
import rundir
from cli import fails_with, tiny_argv

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_bench(name):
    """A script of bench/ as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_bench_scores_every_epoch_and_reports_when_each_threshold_was_reached(tiny_tree, tmp_path, capsys):
    train_bench = load_bench("train_bench")
    report_file = tmp_path / "report.json"
    argv = ["--json", str(report_file), "--data-dir", str(tiny_tree), "--arch", "dbr", "-l", "12", "-e", "3", "--batch-size", "16"]
    assert train_bench.main(argv) == 0
    report = json.loads(report_file.read_text())
    assert capsys.readouterr().out.splitlines()[-1] == json.dumps(report)
    rows = report["epochs"]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(0 <= row["mAP@120"] <= 1 and row["images_per_second"] > 0 for row in rows)
    assert report["train_seconds"] == pytest.approx(rows[-1]["cumulative_train_seconds"])
    assert 0 <= report["compile_seconds"] <= rows[0]["train_seconds"]
    assert report["final_mAP@120"] == pytest.approx(rows[-1]["mAP@120"], abs=1e-4)  # the last epoch's codes are the run's
    for threshold, seconds in report["seconds_to"].items():
        reached = [row["cumulative_train_seconds"] for row in rows if row["mAP@120"] >= float(threshold)]
        assert seconds == (reached[0] if reached else None)
    assert report["recipe"] == "dbr" and report["num_queries"] == 32


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
        (["-e", "0"], "--epochs must be at least 1 to time an epoch, got 0"),
        (["--resume"], "--resume does not apply: the benchmark times a whole training"),
        (["--model-from", "runs/any"], "--model-from does not apply: the benchmark times a whole training"),
        (["--data-dir", "/nonexistent"], "train_bench.py: error: The path does not exist"),
    ],
)
def test_train_bench_refuses_bad_flags_with_exit_2(capsys, argv, message):
    fails_with(capsys, argv, message, main=load_bench("train_bench").main)


@pytest.mark.slow
def test_tta_bench_scores_a_finished_run_under_each_tta_mode(tiny_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert retrieval.main(tiny_argv(tiny_tree, out, "-e", "1", "-q", "20", "-t", "50")) == 0
    tta_bench = load_bench("tta_bench")
    capsys.readouterr()
    assert tta_bench.main([str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    # Without TTA, the run's own mode (--arch dbr), the bench reproduces its score, on its own 20 queries and k.
    assert report["none"]["mAP@50"] == pytest.approx(rundir.read_json(out / rundir.METRICS_FILE)["mAP@50"], abs=1e-4)
    assert all(0 <= report[mode]["mAP@50"] <= 1 for mode in ("flip", "flip-shift"))
    assert report["query_source"] == "test" and report["num_queries"] == 20
    # Held-out queries the run was not held out from would include images it trained on.
    fails_with(capsys, [str(out), "--val-size", "40"], "trained on other images", main=tta_bench.main)
    fails_with(capsys, [str(out), "--val-size", "0"], "--val-size must be at least 1", main=tta_bench.main)
    fails_with(capsys, [str(tmp_path)], "is not a finished run", main=tta_bench.main)


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="feed_bench times TensorFlow's feeds")
def test_feed_bench_times_every_epoch_of_each_feed(capsys):
    feeds = ["keras-pydataset", "tensorflow_dataset"]
    assert load_bench("feed_bench").main(["--epochs", "2", "--steps", "3", "--sleep", "0.01", "--feeds", *feeds]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["epoch_seconds"]) == feeds
    for seconds in report["epoch_seconds"].values():
        assert len(seconds) == 2 and all(second >= 3 * 0.01 for second in seconds)  # each epoch holds its steps' sleeps


@pytest.mark.parametrize("argv, message", [(["--epochs", "1"], "--epochs must be at least 2, got 1"), (["--sleep", "-1"], "--sleep must be at least 0")])
def test_feed_bench_refuses_bad_flags_with_exit_2(capsys, argv, message):
    fails_with(capsys, argv, message, main=load_bench("feed_bench").main)


@pytest.mark.slow
def test_ablate_recipe_tabulates_each_trick_changed_and_resumes(tiny_tree, tmp_path, capsys, monkeypatch):
    ablate_recipe = load_bench("ablate_recipe")
    monkeypatch.setattr(ablate_recipe, "ABLATIONS", {"speedrun": {"label smoothing": ["--label-smoothing", "0"]}})
    argv = ["--data-dir", str(tiny_tree), "--out-dir", str(tmp_path), "--val-size", "20", "--", "-e", "1", "--width", "4", "--batch-size", "20"]
    assert ablate_recipe.main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"variant", ablate_recipe.BASELINE, "label smoothing", ablate_recipe.TTA}
    full = float(rows[ablate_recipe.BASELINE][0])
    assert float(rows["label smoothing"][1]) == pytest.approx(float(rows["label smoothing"][0]) - full, abs=2e-4)  # each figure rounded
    reports = (tmp_path / "reports.jsonl").read_text().splitlines()
    assert len(reports) == 3 and json.loads(reports[1])["flags"][-2:] == ["--label-smoothing", "0"]
    assert "--recipe speedrun" in " ".join(json.loads(reports[1])["flags"])
    # Run again: every report is there already, so nothing trains and the table is the same.
    assert ablate_recipe.main(argv) == 0
    again = capsys.readouterr().out
    assert again.splitlines() == [line for line in table if not line.startswith("==")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out-dir", "x", "--val-size", "0"], "--val-size must be at least 1, got 0"),
        (["--out-dir", "x", "--", "-l", "12"], "-l after -- is this command's to set"),
    ],
)
def test_ablate_recipe_refuses_bad_flags_with_exit_2(capsys, argv, message):
    fails_with(capsys, argv, message, main=load_bench("ablate_recipe").main)


@pytest.mark.slow
def test_step_bench_times_the_recipes_training_step(capsys):
    step_bench = load_bench("step_bench")
    assert step_bench.main(["--width", "4", "--batch-size", "8", "--batches", "2", "--jit-compile", "off"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["jit_compile"] is False and (report["width"], report["batch_size"], report["batches"]) == (4, 8, 2)
    assert report["images_per_second"] == pytest.approx(16 / report["seconds"], rel=0.01)


def test_every_airbench_ablation_is_a_valid_command_line():
    ablate_recipe = load_bench("ablate_recipe")
    parser = options.build_parser()
    for flags in ablate_recipe.ABLATIONS["airbench"].values():
        args = parser.parse_args(["--recipe", "airbench", *flags])
        config = options.resolve_args(args)
        filled = recipes.fill(config, recipes.AIRBENCH, colour=True, train_size=45_000)
        key = flags[0].lstrip("-").replace("-", "_")
        assert filled[key] != recipes.RECIPES[recipes.AIRBENCH][key]  # each sets one setting away from the recipe's


def test_step_bench_refuses_an_empty_batch_with_exit_2(capsys):
    fails_with(capsys, ["--batch-size", "0"], "--batch-size must be at least 1, got 0", main=load_bench("step_bench").main)


def test_retrieval_bench_passes_the_arguments_after_a_double_dash_to_retrieval():
    parse = load_bench("retrieval_bench").parse_arguments
    args = parse(["classroom", "--data-dir", "copy.tar.gz", "--", "--lr", "0.3", "--width", "24"])
    assert (args.preset, args.data_dir, args.extra) == ("classroom", "copy.tar.gz", ["--lr", "0.3", "--width", "24"])
    assert parse(["full"]).extra == []


def test_retrieval_bench_refuses_an_unknown_preset_with_exit_2(capsys):
    fails_with(capsys, ["weekly"], "argument preset: invalid choice: 'weekly'", main=load_bench("retrieval_bench").main)
