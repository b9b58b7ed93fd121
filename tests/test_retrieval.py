"""The command line end to end: bad input, outputs, resume, and a small real training run."""

import json
import os
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

import data
import evaluate
import models
import options
import protocols
import retrieval
import rundir
import train
from cli import TINY_CLASSES, fails_with, tiny_argv

# --- bad input: every case ends with a one-line message and exit status 2 -------------


def test_bad_data_dirs_exit_2(capsys, tmp_path):
    fails_with(capsys, ["--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "a")], "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails_with(capsys, ["--data-dir", str(empty), "--out", str(tmp_path / "b")], "empty")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 not really a gzip stream")
    fails_with(capsys, ["--data-dir", str(broken), "--out", str(tmp_path / "c")], str(broken))


def test_out_folder_problems_exit_2_and_keep_earlier_files(capsys, tmp_path, tiny_tree):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails_with(capsys, tiny_argv(tiny_tree, blocker / "run"), "not writable")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / rundir.METRICS_FILE).write_text('{"mAP@1000": 0.9}')
    fails_with(capsys, tiny_argv(tiny_tree, earlier), "is not empty; pass --resume")
    fails_with(capsys, ["--resume", "--out", str(tmp_path / "nothing")], "no run to resume")
    # Bad input with --overwrite must not destroy the earlier run either.
    fails_with(capsys, [*tiny_argv(tiny_tree, earlier), "-q", "999", "--overwrite"], "--queries must be at most 32")
    assert (earlier / rundir.METRICS_FILE).read_text() == '{"mAP@1000": 0.9}'


def test_sizes_checked_against_the_data_exit_2(capsys, tmp_path, tiny_tree):
    fails_with(capsys, [*tiny_argv(tiny_tree, tmp_path / "a"), "-q", "33"], "--queries must be at most 32 (the test split's size), got 33")
    fails_with(capsys, [*tiny_argv(tiny_tree, tmp_path / "b"), "-t", "121"], "--top must be at most the database size, 120, got 121")
    fails_with(capsys, [*tiny_argv(tiny_tree, tmp_path / "c"), "-n", "121"], "--train-size must be at most 120")
    fails_with(capsys, [*tiny_argv(tiny_tree, tmp_path / "d"), "-n", "2"], "--train-size must be at least the number of classes, 4, got 2")
    assert not (tmp_path / "a" / rundir.CONFIG_FILE).exists()


# --- splits -----------------------------------------------------------------------------


def tiny_config(tiny_tree, out, **overrides):
    args = options.build_parser().parse_args(tiny_argv(tiny_tree, out))
    return {**options.resolve_args(args), **overrides}


def test_splits_are_seeded_and_balanced(tiny_tree, tmp_path):
    dataset = data.load_dataset("cifar10", data_dir=str(tiny_tree))
    config = tiny_config(tiny_tree, tmp_path, train_size=40, queries=10)
    first, again = protocols.select_split(config, dataset), protocols.select_split(config, dataset)
    np.testing.assert_array_equal(first.database.positions, again.database.positions)
    np.testing.assert_array_equal(first.queries.positions, again.queries.positions)
    assert np.bincount(dataset.y_train[first.database.positions]).tolist() == [10, 10, 10, 10]
    assert set(first.queries.sources) == {1} and set(first.database.sources) == {0}
    other = protocols.select_split({**config, "seed": 1}, dataset)
    assert not np.array_equal(first.queries.positions, other.queries.positions)


def test_validation_queries_come_out_of_training(tiny_tree, tmp_path):
    dataset = data.load_dataset("cifar10", data_dir=str(tiny_tree))
    split = protocols.select_split(tiny_config(tiny_tree, tmp_path, val_size=20), dataset)
    assert len(split.queries) == 20 and len(split.database) == 100 and len(split.train) == 100
    assert set(split.queries.sources) == {0}  # training images, not test images
    assert not set(split.queries.positions) & set(split.database.positions)


def test_train_size_is_refused_by_fixed_protocols(capsys, tiny_tree, tmp_path):
    fails_with(capsys, [*tiny_argv(tiny_tree, tmp_path / "a"), "--protocol", "dhn", "-n", "40"], "needs 600 images of every class")
    fails_with(capsys, [*tiny_argv(tiny_tree, tmp_path / "b"), "--protocol", "nope"], "--protocol must be one of")


@pytest.mark.parametrize(
    "top, database_size, expected",
    [(None, 5000, (1000, None)), ("all", 5000, (5000, None)), (7, 5000, (7, None))],
)
def test_resolve_top(top, database_size, expected):
    assert protocols.resolve_top(top, database_size, 1000) == expected


def test_default_top_is_clipped_with_a_note():
    top, note = protocols.resolve_top(None, 120, 1000)
    assert top == 120 and "clipped to the database size, 120" in note


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "dbr"
    assert retrieval.main([*tiny_argv(tiny_tree, out), "--method", "dbr", "-c", "2", "-e", "8"]) == 0
    return out


@pytest.mark.slow
def test_run_writes_every_output(finished_run):
    names = sorted(path.name for path in finished_run.iterdir())
    assert names == sorted([*rundir.RUN_FILES, rundir.LOCK_FILE])  # no temporary or backup left behind
    metrics = json.loads((finished_run / rundir.METRICS_FILE).read_text())
    assert metrics["top"] == 120 and metrics["bits"] == 12 and metrics["method"] == "dbr"
    assert len(metrics["precision_at_k"]) == 120
    with h5py.File(finished_run / rundir.CODES_FILE) as codes:  # the metrics are those of the stored codes
        scores = evaluate.evaluate_retrieval(codes["query_bits"][()], codes["query_labels"][()], codes["db_bits"][()], codes["db_labels"][()], 120)
    assert metrics["mAP@120"] == pytest.approx(scores["mAP"]) and metrics["precision@120"] == pytest.approx(scores["precision"])
    assert metrics["mAP@all"] == pytest.approx(scores["mAP_all"])
    assert metrics["codeword_min_distance"] >= 3
    assert {"train_seconds", "encode_seconds", "eval_seconds"} <= set(metrics["timings"])
    assert metrics["keras_version"] == keras.__version__
    config = json.loads((finished_run / rundir.CONFIG_FILE).read_text())
    assert config["code_type"] == "hamming74" and config["epochs"] == 8


@pytest.mark.slow
def test_run_learns_far_above_chance(finished_run):
    metrics = json.loads((finished_run / rundir.METRICS_FILE).read_text())
    chance = 1 / len(TINY_CLASSES)
    assert metrics["mAP@120"] > 0.8 > chance


@pytest.mark.slow
def test_codes_file_holds_exactly_the_evaluated_items(finished_run):
    with h5py.File(finished_run / rundir.CODES_FILE) as codes:
        assert codes["db_bits"].shape == (120, 12) and codes["query_bits"].shape == (32, 12)
        assert codes["db_bits"].dtype == np.uint8 and set(np.unique(codes["db_bits"][()])) <= {0, 1}
        assert codes["db_labels"].shape == (120,) and codes["query_labels"].shape == (32,)
        db_index = codes["db_index"][()]
        assert sorted(db_index) == list(range(120)) and not np.array_equal(db_index, np.arange(120))  # shuffled
        np.testing.assert_array_equal(codes["query_index"][()], np.arange(32))
        assert set(codes["db_source"][()]) == {0} and set(codes["query_source"][()]) == {1}
        assert list(codes["db_source"].attrs["sources"]) == ["train", "test", "database"]
        assert codes.attrs["protocol"] == "dlbhc"


@pytest.mark.slow
def test_saved_model_reproduces_the_codes(finished_run, tiny_tree):
    model = keras.saving.load_model(finished_run / rundir.MODEL_FILE)
    dataset = data.load_dataset("cifar10", data_dir=str(tiny_tree))
    latent = models.encoder_of(model).predict(dataset.x_test, verbose=0)
    with h5py.File(finished_run / rundir.CODES_FILE) as codes:
        np.testing.assert_array_equal((latent > models.BIT_THRESHOLD).astype(np.uint8), codes["query_bits"][()])


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing(finished_run, capsys):
    before = (finished_run / rundir.METRICS_FILE).read_text()
    assert retrieval.main(["--resume", "--out", str(finished_run)]) == 0
    assert "holds a finished run" in capsys.readouterr().out
    assert (finished_run / rundir.METRICS_FILE).read_text() == before


def test_a_run_saved_before_the_growth_setting_resumes_with_the_network_it_had(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    for arch, growth in (("speedrun", 4), ("resnet", None)):
        (out / rundir.CONFIG_FILE).write_text(json.dumps({"arch": arch, "lr": 0.15, "width": 32}))
        config = retrieval._resumed_config(options.build_parser().parse_args(["--resume", "--out", str(out)]))
        assert (config["growth"], config["lr"]) == (growth, 0.15)  # recipes.fill keeps what is set


@pytest.mark.slow
def test_model_from_evaluates_a_trained_model_under_another_protocol_without_training(finished_run, tmp_path):
    out = tmp_path / "evaluated"
    assert retrieval.main(["--model-from", str(finished_run), "--protocol", "dbr", "-q", "8", "-s", "0", "--out", str(out)]) == 0
    metrics = json.loads((out / rundir.METRICS_FILE).read_text())
    assert (metrics["protocol"], metrics["num_queries"], metrics["method"], metrics["bits"]) == ("dbr", 8, "dbr", 12)
    assert metrics["timings"]["train_seconds"] == 0 and metrics["model_from"] == str(finished_run.resolve())
    trained_seconds = json.loads((finished_run / rundir.METRICS_FILE).read_text())["timings"]["train_seconds"]
    assert metrics["model_train_seconds"] == trained_seconds
    with h5py.File(finished_run / rundir.CODES_FILE) as trained, h5py.File(out / rundir.CODES_FILE) as evaluated:
        # The same model and the same database (the training split): the same codes, item for item.
        order, again = np.argsort(trained["db_index"][()]), np.argsort(evaluated["db_index"][()])
        np.testing.assert_array_equal(trained["db_bits"][()][order], evaluated["db_bits"][()][again])
    # An evaluation's model can be evaluated again; the training time is still the training's.
    assert retrieval.main(["--model-from", str(out), "-q", "4", "-s", "0", "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / rundir.METRICS_FILE).read_text())["model_train_seconds"] == trained_seconds


@pytest.mark.slow
def test_model_from_refuses_other_training_images_and_training_flags(finished_run, tmp_path, capsys):
    # Validation queries come out of the training split, which the model trained on: refused.
    fails_with(capsys, ["--model-from", str(finished_run), "--val-size", "8", "--out", str(tmp_path / "a")], "trained on other images")
    fails_with(capsys, ["--model-from", str(finished_run), "-l", "24", "--out", str(tmp_path / "b")], "drop --bits")
    fails_with(capsys, ["--model-from", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")], "no finished run there")
    assert not (tmp_path / "a" / rundir.METRICS_FILE).exists()


class KillAfterEpoch(keras.callbacks.Callback):
    """Stands in for a kill: stops the process's training after a given epoch has been backed up."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


class SlowEpochs(keras.callbacks.Callback):
    """Makes every epoch take at least `seconds` longer, before its checkpoint is written."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(self.seconds)


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


# Extra seconds slept in each epoch of the run that is killed, so its share of the training time shows.
KILLED_EPOCH_SECONDS = 3


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_finished_epoch(tiny_tree, tmp_path, capsys):
    out = tmp_path / "killed"
    config = tiny_config(tiny_tree, out, epochs=4, method="dlbhc", code_type=None)
    rundir.check_out_dir(out)
    with pytest.raises(KeyboardInterrupt):
        retrieval.run(config, verbose=0, callbacks=[SlowEpochs(KILLED_EPOCH_SECONDS), KillAfterEpoch(1)])
    assert (out / rundir.CONFIG_FILE).is_file() and (out / rundir.BACKUP_DIR).is_dir()
    assert not (out / rundir.METRICS_FILE).exists() and not (out / rundir.MODEL_FILE).exists()
    assert train.resumed_epoch(out / rundir.BACKUP_DIR) == 2
    seconds_before = train.checkpoint_seconds(out / rundir.BACKUP_DIR)
    assert seconds_before >= 2 * KILLED_EPOCH_SECONDS

    recorder = EpochRecorder()
    metrics = retrieval.run(rundir.read_json(out / rundir.CONFIG_FILE), verbose=1, resume=True, callbacks=[recorder])
    assert "resuming from epoch 2 of 4" in capsys.readouterr().out
    assert recorder.epochs == [2, 3]
    assert metrics["epochs_trained"] == 4 and (out / rundir.METRICS_FILE).is_file()
    assert metrics["timings"]["train_seconds"] > seconds_before  # the killed run's epochs count too
    assert not (out / rundir.BACKUP_DIR).exists()


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run(tiny_tree, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / rundir.METRICS_FILE).write_text("{}")
    (out / "notes.txt").write_text("kept")
    assert retrieval.main([*tiny_argv(tiny_tree, out), "-e", "1", "--overwrite", "-t", "all"]) == 0
    metrics = json.loads((out / rundir.METRICS_FILE).read_text())
    assert metrics["top"] == 120 and "mAP@120" in metrics
    assert (out / "notes.txt").read_text() == "kept"


# `python retrieval.py ARGS` with `import tensorflow` failing, as on the GPU machine (JAX, no TensorFlow).
WITHOUT_TENSORFLOW = """
import runpy, sys

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoTensorFlow())
sys.argv = ["retrieval.py", *sys.argv[1:]]
runpy.run_path("retrieval.py", run_name="__main__")
"""


@pytest.mark.slow
def test_jax_backend_runs_the_same_command_without_tensorflow(tiny_tree, tmp_path):
    pytest.importorskip("jax", reason="the JAX backend needs jax installed")
    out = tmp_path / "jax"
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    command = [sys.executable, "-c", WITHOUT_TENSORFLOW, *tiny_argv(tiny_tree, out), "-e", "4"]
    result = subprocess.run(command, cwd=retrieval.__file__.rsplit("/", 1)[0], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / rundir.METRICS_FILE).read_text())
    assert metrics["backend"] == "jax" and metrics["mAP@120"] > 0.8  # learns as on TensorFlow (chance: 0.25)


@pytest.mark.slow
def test_mnist_from_the_offline_copy(shared_datasets, tmp_path):
    out = tmp_path / "mnist"
    argv = ["--dataset", "mnist", "--data-dir", str(shared_datasets / "mnist"), "--arch", "dbr", "-n", "1000", "-q", "200", "-e", "5", "-s", "0", "--out", str(out)]
    assert retrieval.main(argv) == 0
    metrics = json.loads((out / rundir.METRICS_FILE).read_text())
    assert metrics["num_database"] == 1000 and metrics["num_queries"] == 200
    assert metrics["mAP@1000"] > 0.5  # chance is about 0.1
