"""Training recipes: the recipes, the speed-run network and optimiser, on-device augmentation, XLA, label smoothing, flip TTA."""

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
import options
import retrieval
import rundir
import train
from cli import fails_with, tiny_argv

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- recipes ------------------------------------------------------------------------------


def resolved(*flags):
    return options.resolve_args(options.build_parser().parse_args(["--out", "unused", *flags]))


def test_auto_is_the_archs_own_recipe():
    assert recipes.choose("auto", "speedrun") == "speedrun"
    assert recipes.choose("auto", "dbr") == "dbr"
    assert recipes.choose("auto", "resnet") == "classic"
    assert recipes.choose("speedrun", "resnet") == "speedrun"
    with pytest.raises(ValueError, match="recipe='quick'"):
        recipes.choose("quick", "speedrun")


def test_the_default_run_is_the_speedrun_network_with_the_dlbhc_method():
    config = resolved()
    assert (config["arch"], config["method"], config["recipe"]) == ("speedrun", "dlbhc", "auto")
    assert resolved("--arch", "dbr")["method"] == "dbr"  # DeepBinaryRepre's network trains its own method
    assert resolved("--arch", "dbr", "--method", "dhn")["method"] == "dhn"


def test_a_recipe_fills_only_unset_settings():
    config = recipes.fill(resolved("-e", "3", "--batch-size", "64"), "speedrun", colour=True, train_size=50_000)
    assert (config["epochs"], config["batch_size"]) == (3, 64)  # given: kept
    assert (config["lr"], config["width"], config["schedule"], config["tta"]) == (1.0, 32, "triangular", True)
    assert (config["norm_bias_lr_scale"], config["weight_averaging"], config["label_smoothing"]) == (64.0, False, 0.2)
    assert config["recipe"] == "speedrun"


def test_the_speedrun_recipe_narrows_the_network_for_small_training_sets():
    small = recipes.fill(resolved(), "speedrun", colour=True, train_size=5000)
    assert {key: small[key] for key in recipes.SMALL_DATA} == recipes.SMALL_DATA
    assert recipes.fill(resolved("--width", "16"), "speedrun", colour=True, train_size=5000)["width"] == 16


def test_each_method_takes_its_own_loss_scale_from_the_recipe():
    def loss_scale(method, *flags):
        return recipes.fill(resolved("--method", method, *flags), "speedrun", colour=True, train_size=50_000)["loss_scale"]

    assert [loss_scale(method) for method in ("dlbhc", "dbr", "hadamard", "dhn", "dnnh")] == [1.0, 8.0, 8.0, 1.0, 0.1]
    assert loss_scale("dbr", "--loss-scale", "2") == 2.0
    assert recipes.fill(resolved("--arch", "dbr"), "dbr", colour=True, train_size=50_000)["loss_scale"] == 1.0


def test_the_dbr_recipe_keeps_deepbinaryrepres_settings():
    config = recipes.fill(resolved("--arch", "dbr"), "dbr", colour=True, train_size=50_000)
    expected = {"epochs": 20, "batch_size": 32, "optimizer": "adadelta", "lr": None, "schedule": "constant", "augment": "none", "tta": False}
    assert {key: config[key] for key in expected} == expected


def test_settings_that_do_not_apply_stay_unset():
    config = recipes.fill(resolved("--arch", "dbr", "--method", "dbr"), "speedrun", colour=False, train_size=50_000)
    assert config["width"] is None  # no width to set
    assert config["label_smoothing"] is None  # not dlbhc
    assert config["tta"] is False  # grey images are not mirrored


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--recipe", "quick"], "--recipe must be one of auto, speedrun, dbr, classic, got 'quick'"),
        (["--width", "0"], "--width must be at least 1, got 0"),
        (["--arch", "dbr", "--width", "64"], "--width applies to --arch resnet or speedrun only, not --arch dbr"),
        (["--augment", "rotate"], "--augment must be one of none, flip, crop-flip, light-crop-flip, got 'rotate'"),
        (["--arch", "dbr", "--label-smoothing", "0.1"], "--label-smoothing applies to --method dlbhc only, not --method dbr"),
        (["--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1, got 1.0"),
        (["--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1.0"),
        (["--norm-bias-lr-scale", "0"], "--norm-bias-lr-scale must be positive, got 0.0"),
        (["--loss-scale", "-2"], "--loss-scale must be positive, got -2.0"),
        (["--schedule", "linear"], "--schedule must be one of constant, cosine, triangular, got 'linear'"),
    ],
)
def test_bad_training_settings_exit_2(capsys, tmp_path, flags, message):
    fails_with(capsys, ["--out", str(tmp_path / "run"), *flags], message)
    assert not (tmp_path / "run").exists()


def test_tta_on_grey_images_is_a_usage_error():
    with pytest.raises(options.UsageError, match="--tta averages each image with its mirror image: it applies to colour images only"):
        retrieval._resolve_recipe(resolved("--tta"), colour=False, train_size=100)
    assert retrieval._resolve_recipe(resolved(), colour=False, train_size=100)["tta"] is False


@pytest.mark.slow
def test_the_speedrun_recipe_trains_end_to_end_and_is_recorded(tiny_tree, tmp_path):
    out = tmp_path / "run"
    argv = ["--data-dir", str(tiny_tree), "-l", "12", "-e", "5", "-s", "0", "--out", str(out), "--width", "8", "--batch-size", "24"]
    assert retrieval.main(argv) == 0
    config = rundir.read_json(out / rundir.CONFIG_FILE)
    assert (config["recipe"], config["arch"], config["method"], config["schedule"]) == ("speedrun", "speedrun", "dlbhc", "triangular")
    metrics = rundir.read_json(out / rundir.METRICS_FILE)
    assert metrics["recipe"] == "speedrun" and metrics["label_smoothing"] == 0.2
    assert metrics["mAP@120"] > 0.6  # four easy classes: chance is about 0.25
    encoder = keras.saving.load_model(out / rundir.MODEL_FILE)
    assert encoder.get_layer("block1_conv1").filters == 8 and encoder.get_layer("block2_conv1").filters == 32
    assert config["augment"] == "flip" and "random_shift" not in {layer.name for layer in encoder.layers}  # small data: no shifts
    # Adapted to the training images before training, and never trained: its kernel is not zero.
    assert np.abs(keras.ops.convert_to_numpy(encoder.get_layer("whitening").kernel)).max() > 0
    assert isinstance(encoder.optimizer, train.RateScaleSGD) and encoder.optimizer.norm_bias_lr_scale == 64.0


# --- the speed-run network and optimiser -------------------------------------------------


def test_patch_whitening_makes_the_patch_covariance_the_identity_and_stays_frozen():
    images = np.random.default_rng(1).random((40, 12, 12, 3), dtype="float32") * np.array([1.0, 0.5, 3.0], "float32")
    layer = models.PatchWhitening()
    layer.adapt(images)
    outputs = keras.ops.convert_to_numpy(layer(images)).reshape(-1, 24)
    np.testing.assert_allclose(np.cov(outputs[:, :12], rowvar=False), np.eye(12), atol=0.05)
    np.testing.assert_allclose(outputs[:, 12:], -outputs[:, :12], atol=1e-4)  # +W and -W
    np.testing.assert_allclose(outputs.mean(axis=0), 0.0, atol=1e-3)  # the bias centres the mean patch
    assert [weight.name for weight in layer.trainable_weights] == ["bias"]


def test_identity_initialised_convolutions_pass_their_input_through():
    images = np.random.default_rng(2).random((2, 6, 6, 3), dtype="float32")
    conv = keras.layers.Conv2D(5, 3, padding="same", use_bias=False, kernel_initializer=models.PartialIdentity(seed=0))
    outputs = keras.ops.convert_to_numpy(conv(images))
    np.testing.assert_allclose(outputs[..., :3], images, rtol=1e-6)


def test_the_triangular_schedule_rises_to_its_peak_then_falls_to_zero():
    schedule = train.Triangular(2.0, total_steps=1000)
    rates = [float(schedule(step)) for step in (0, 115, 230, 615, 1000)]
    assert rates == pytest.approx([0.4, 1.2, 2.0, 1.0, 0.0], abs=1e-3)


def test_batch_norm_biases_take_scaled_steps_and_the_rest_plain_ones():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense"), keras.layers.BatchNormalization(scale=False, name="x_bn")])
    optimizer = train.make_optimizer("sgd", 0.1, norm_bias_lr_scale=10.0)
    optimizer.build(model.trainable_variables)
    before = [keras.ops.convert_to_numpy(variable).copy() for variable in model.trainable_variables]
    optimizer.apply([keras.ops.ones(variable.shape) for variable in model.trainable_variables], model.trainable_variables)
    steps = {variable.path.split("/", 1)[1]: float(np.abs(keras.ops.convert_to_numpy(variable) - old).max()) for variable, old in zip(model.trainable_variables, before)}
    plain = steps["dense/kernel"]
    assert steps["x_bn/beta"] == pytest.approx(10 * plain, rel=1e-5)
    assert steps["dense/bias"] == pytest.approx(plain, rel=1e-5)


def test_weight_averaging_replaces_the_weights_by_their_average_when_fit_ends():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=train.make_optimizer("sgd", 0.1, weight_averaging=True), loss="mse")
    x = np.random.default_rng(0).random((64, 2), dtype="float32")
    model.fit(x, x.sum(axis=1, keepdims=True), epochs=2, batch_size=8, verbose=0)
    average = [keras.ops.convert_to_numpy(variable) for variable in model.optimizer._model_variables_moving_average]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.layers[0].kernel), average[0], rtol=1e-6)


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
    with pytest.raises(ValueError, match="`width` applies to arch"):
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


@pytest.mark.slow
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
        (["--data-dir", "/nonexistent"], "train_bench.py: error: The path does not exist"),
    ],
)
def test_train_bench_refuses_bad_flags_with_exit_2(capsys, argv, message):
    fails_with(capsys, argv, message, main=load_bench("train_bench").main)


@pytest.mark.slow
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


@pytest.mark.slow
def test_ablate_recipe_tabulates_each_trick_removed_and_resumes(tiny_tree, tmp_path, capsys, monkeypatch):
    ablate_recipe = load_bench("ablate_recipe")
    monkeypatch.setattr(ablate_recipe, "ABLATIONS", {"label smoothing": ["--label-smoothing", "0"]})
    argv = ["--data-dir", str(tiny_tree), "--out-dir", str(tmp_path), "--val-size", "20", "--", "-e", "1", "--width", "4", "--batch-size", "20"]
    assert ablate_recipe.main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in table if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"removed", ablate_recipe.BASELINE, "label smoothing", ablate_recipe.TTA}
    full = float(rows[ablate_recipe.BASELINE][0])
    assert float(rows["label smoothing"][1]) == pytest.approx(float(rows["label smoothing"][0]) - full, abs=2e-4)  # each figure rounded
    reports = (tmp_path / "reports.jsonl").read_text().splitlines()
    assert len(reports) == 3 and json.loads(reports[1])["flags"][-2:] == ["--label-smoothing", "0"]
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
