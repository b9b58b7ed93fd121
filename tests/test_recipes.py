"""Issue 5's training recipe: the recipes, the on-device augmentation, XLA, label smoothing and flip TTA."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import methods
import models
import recipes
import retrieval
import rundir
import train
from cli import fails_with, tiny_argv

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- recipes ------------------------------------------------------------------------------


def resolved(*flags):
    return retrieval.resolve_args(retrieval.build_parser().parse_args(["--out", "unused", *flags]))


def test_auto_is_fast_on_a_gpu_and_classic_otherwise():
    assert recipes.choose("auto", gpu=True) == "fast"
    assert recipes.choose("auto", gpu=False) == "classic"
    assert recipes.choose("fast", gpu=False) == "fast"
    with pytest.raises(ValueError, match="recipe='quick'"):
        recipes.choose("quick", gpu=False)


def test_a_recipe_fills_only_unset_settings():
    config = recipes.fill(resolved("--recipe", "fast", "-e", "3", "--batch-size", "64"), "fast", colour=True)
    assert (config["epochs"], config["batch_size"]) == (3, 64)  # given: kept
    assert (config["lr"], config["width"], config["augment"], config["tta"]) == (0.002, 64, "crop-flip", True)
    assert config["recipe"] == "fast"


def test_classic_keeps_the_measured_cpu_defaults():
    config = recipes.fill(resolved(), "classic", colour=True)
    expected = {"epochs": 20, "batch_size": 32, "optimizer": "adam", "lr": None, "schedule": "cosine", "width": 32, "tta": False}
    assert {key: config[key] for key in expected} == expected


def test_settings_that_do_not_apply_stay_unset():
    config = recipes.fill(resolved("--arch", "dbr", "--method", "dbr"), "fast", colour=False)
    assert config["width"] is None  # not a resnet
    assert config["label_smoothing"] is None  # not dlbhc
    assert config["tta"] is False  # grey images are not mirrored
    assert recipes.fill(resolved("--method", "dlbhc"), "fast", colour=True)["label_smoothing"] == 0.1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--recipe", "quick"], "--recipe must be one of auto, classic, fast, got 'quick'"),
        (["--width", "0"], "--width must be at least 1, got 0"),
        (["--arch", "dbr", "--width", "64"], "--width applies to --arch resnet only, not --arch dbr"),
        (["--augment", "rotate"], "--augment must be one of none, flip, crop-flip, got 'rotate'"),
        (["--label-smoothing", "0.1"], "--label-smoothing applies to --method dlbhc only, not --method dbr"),
        (["--method", "dlbhc", "--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1, got 1.0"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1.0"),
    ],
)
def test_bad_training_settings_exit_2(capsys, tmp_path, flags, message):
    fails_with(capsys, ["--out", str(tmp_path / "run"), *flags], message)
    assert not (tmp_path / "run").exists()


def test_tta_on_grey_images_is_a_usage_error():
    with pytest.raises(retrieval.UsageError, match="--tta averages each image with its mirror image: it applies to colour images only"):
        retrieval._resolve_recipe(resolved("--tta"), colour=False)
    assert retrieval._resolve_recipe(resolved(), colour=False)["tta"] is False


def test_the_fast_settings_train_end_to_end_and_are_recorded(tiny_tree, tmp_path):
    out = tmp_path / "run"
    argv = tiny_argv(tiny_tree, out, "--recipe", "fast", "--arch", "resnet", "--width", "4", "--method", "dlbhc", "--batch-size", "16")
    assert retrieval.main(argv) == 0
    config = rundir.read_json(out / rundir.CONFIG_FILE)
    assert (config["recipe"], config["augment"], config["tta"], config["label_smoothing"]) == ("fast", "crop-flip", True, 0.1)
    metrics = rundir.read_json(out / rundir.METRICS_FILE)
    assert metrics["recipe"] == "fast" and metrics["label_smoothing"] == 0.1
    # Keras compiles with XLA on JAX, and on TensorFlow only with a GPU.
    assert metrics["jit_compile"] is (keras.backend.backend() == "jax")
    encoder = keras.saving.load_model(out / rundir.MODEL_FILE)
    assert encoder.get_layer("stem").filters == 4
    assert isinstance(encoder.get_layer("random_shift"), models.RandomShift)


# --- on-device augmentation ---------------------------------------------------------------


def test_random_shift_cuts_a_window_of_the_reflect_padded_image():
    images = np.random.default_rng(0).integers(0, 255, size=(64, 8, 8, 3)).astype("float32")
    padding = 2
    padded = np.pad(images, [(0, 0), (padding, padding), (padding, padding), (0, 0)], mode="reflect")
    shifted = keras.ops.convert_to_numpy(models.RandomShift(padding, seed=1)(images, training=True))
    offsets = set()
    for image, window in zip(padded, shifted):
        matches = [(row, column) for row in range(2 * padding + 1) for column in range(2 * padding + 1)
                   if np.array_equal(image[row : row + 8, column : column + 8], window)]
        assert matches, "not a window of the padded image"
        offsets.add(matches[0])
    assert len(offsets) > 10  # per-image offsets, spread over the 25 possible


def test_random_shift_is_the_identity_outside_training():
    images = np.arange(2 * 6 * 6 * 1, dtype="float32").reshape(2, 6, 6, 1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(models.RandomShift(3)(images)), images)
    with pytest.raises(ValueError, match="padding=0"):
        models.RandomShift(0)


def test_augmentation_layers_follow_the_setting_and_the_image_kind():
    def layer_names(input_shape, augment, arch="resnet"):
        return {layer.name for layer in models.build_encoder(arch, input_shape, 8, augment=augment, width=2 if arch == "resnet" else None).layers}

    assert {"random_shift", "random_flip"} <= layer_names((32, 32, 3), "crop-flip")
    assert "random_flip" not in layer_names((28, 28, 1), "crop-flip")  # digits are shifted, not mirrored
    assert not {"random_shift", "random_flip"} & layer_names((32, 32, 3), "none")
    assert "random_flip" not in layer_names((32, 32, 3), None, arch="dbr")  # the original CNN: none
    with pytest.raises(ValueError, match="`width` applies to arch='resnet' only"):
        models.build_encoder("dbr", (32, 32, 3), 8, width=64)


def test_width_sets_the_residual_stages():
    encoder = models.build_encoder("resnet", (32, 32, 3), 8, width=8)
    assert [encoder.get_layer(f"stage{stage}_conv").filters for stage in (1, 2, 3)] == [8, 16, 32]


JIT_SCRIPT = """
import keras, models
shifted = models.build_encoder("resnet", (32, 32, 3), 8, augment="crop-flip", width=2)
keras_cropped = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.RandomCrop(28, 28), keras.layers.Flatten(), keras.layers.Dense(8)])
for model in (shifted, keras_cropped):
    model.compile(optimizer="adam", loss="mse")
    print(model.jit_compile)
"""
JAX_INSTALLED = importlib.util.find_spec("jax") is not None


@pytest.mark.skipif(not JAX_INSTALLED, reason="JAX is not installed")
def test_the_shift_keeps_xla_on_under_jax_where_keras_random_crop_turns_it_off():
    result = subprocess.run(
        [sys.executable, "-c", JIT_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(REPO_ROOT)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "False"]


# --- label smoothing, weight decay, flip TTA ---------------------------------------------


def test_label_smoothing_spreads_the_targets():
    probabilities = np.array([[0.5, 0.25, 0.25]], dtype="float32")
    smoothed = methods.make_method("dlbhc", 3, 8, label_smoothing=0.3)
    expected = -(0.8 * np.log(0.5) + 0.1 * np.log(0.25) + 0.1 * np.log(0.25))  # targets 0.7 + 0.3/3, 0.3/3, 0.3/3
    assert float(smoothed.loss()(smoothed.targets([0]), probabilities)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing=1.5"):
        methods.make_method("dlbhc", 3, 8, label_smoothing=1.5)
    with pytest.raises(ValueError, match="method 'dlbhc' only"):
        methods.make_method("dbr", 3, 8, label_smoothing=0.1)


def test_weight_decay_reaches_the_optimizer():
    assert train.make_optimizer("adam", weight_decay=0.01).weight_decay == 0.01
    assert train.make_optimizer("adam").weight_decay is None


def test_flip_tta_averages_an_image_and_its_mirror_image():
    inputs = keras.Input((2, 3, 1))
    left_weighted = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(
        keras.layers.Flatten()(inputs * np.array([1.0, 0.0, 0.0], "float32")[None, None, :, None])))
    images = np.array([[[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]]], "float32")
    # Left column only: 1 + 4 = 5 plain, 3 + 6 = 9 mirrored; the mean is 7.
    assert models.predict(left_weighted, images, 8)[0, 0] == pytest.approx(5.0)
    assert models.predict_with_flips(left_weighted, images, 8)[0, 0] == pytest.approx(7.0)


# --- bench/train_bench.py -----------------------------------------------------------------


def load_bench(name):
    """A script of bench/ as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert report["recipe"] == "classic" and report["num_queries"] == 32


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
        (["-e", "0"], "--epochs must be at least 1 to time an epoch, got 0"),
        (["--resume"], "--resume does not apply: the benchmark times a whole training"),
        (["--data-dir", "/nonexistent"], "train_bench.py: error: The path does not exist"),
    ],
)
def test_train_bench_refuses_bad_flags_with_exit_2(capsys, argv, message):
    fails_with(capsys, argv, message, main=load_bench("train_bench").main)


def test_tune_recipe_refuses_unknown_candidates_with_exit_2(capsys, tmp_path):
    tune_recipe = load_bench("tune_recipe")
    argv = ["--out-dir", str(tmp_path), "--candidates", "fast", "slow"]
    fails_with(capsys, argv, "--candidates must be among fast, fast-dlbhc, fast-wide, got slow", main=tune_recipe.main)
    assert not (tmp_path / "reports.jsonl").exists()


def test_tta_bench_scores_a_finished_run_with_and_without_flips(tiny_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert retrieval.main(tiny_argv(tiny_tree, out, "-e", "1")) == 0
    tta_bench = load_bench("tta_bench")
    capsys.readouterr()
    assert tta_bench.main([str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    # Without flips, the bench reproduces the run's own score.
    assert report["plain"]["mAP@120"] == pytest.approx(rundir.read_json(out / rundir.METRICS_FILE)["mAP@120"], abs=1e-4)
    assert 0 <= report["tta"]["mAP@120"] <= 1 and report["query_source"] == "test"


def test_flip_tta_mirrors_in_chunks_with_the_same_result(monkeypatch):
    encoder = models.build_encoder("dbr", (16, 16, 3), 8)
    images = np.random.default_rng(0).integers(0, 255, size=(10, 16, 16, 3)).astype("uint8")
    whole = models.predict_with_flips(encoder, images, 4)
    monkeypatch.setattr(models, "TTA_CHUNK", 3)  # 4 chunks, the last of 1 image
    np.testing.assert_allclose(models.predict_with_flips(encoder, images, 4), whole, rtol=1e-6)
    assert whole.shape == (10, 8)


def test_the_cli_names_the_augmentations_models_builds():
    assert retrieval.AUGMENTATIONS == models.AUGMENTATIONS
