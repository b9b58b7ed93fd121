"""Tests for recipes.py: the recipes, what each fills in and for which run, and the default run end to end."""

from pathlib import Path

import keras
import numpy as np
import pytest

import methods
import options
import recipes
import retrieval
import rundir
import train

REPO_ROOT = Path(__file__).resolve().parent.parent


# --- recipes ------------------------------------------------------------------------------


def resolved(*flags):
    return options.resolve_args(options.build_parser().parse_args(["--out", "unused", *flags]))


def test_auto_is_the_archs_own_recipe():
    assert recipes.choose("auto", "speedrun") == "speedrun"
    assert recipes.choose("auto", "speedrun", "dlbhc", train_size=recipes.SMALL_DATA_IMAGES) == "airbench"  # full scale
    assert recipes.choose("auto", "speedrun", "dnnh", train_size=50_000) == "speedrun"  # not measured with it
    assert recipes.choose("speedrun", "speedrun", "dlbhc", train_size=50_000) == "speedrun"
    assert recipes.choose("auto", "dbr") == "dbr"
    assert recipes.choose("auto", "resnet") == "classic"
    assert recipes.choose("speedrun", "resnet") == "speedrun"
    with pytest.raises(ValueError, match="recipe='quick'"):
        recipes.choose("quick", "speedrun")


def test_a_recipe_fills_only_unset_settings():
    config = recipes.fill(resolved("-e", "3", "--batch-size", "64"), "speedrun", colour=True, train_size=50_000)
    assert (config["epochs"], config["batch_size"]) == (3, 64)  # given: kept
    assert (config["lr"], config["width"], config["schedule"], config["tta"]) == (1.0, 32, "triangular", "flip-shift")
    assert (config["norm_bias_lr_scale"], config["weight_averaging"], config["label_smoothing"]) == (64.0, False, 0.2)
    assert config["recipe"] == "speedrun"


def test_the_speedrun_recipe_takes_small_batches_for_more_epochs_on_small_training_sets():
    small = recipes.fill(resolved(), "speedrun", colour=True, train_size=5000)
    assert {key: small[key] for key in recipes.SMALL_DATA} == recipes.SMALL_DATA
    assert recipes.fill(resolved("--width", "16"), "speedrun", colour=True, train_size=5000)["width"] == 16
    assert recipes.fill(resolved("-e", "3"), "speedrun", colour=True, train_size=5000)["epochs"] == 3


@pytest.mark.parametrize("epochs, train_size, augment, width, growth, lr", [
    ("5", 5000, "flip", 32, 3, 0.3),  # the classroom run: 25,000 images seen, narrower, at twice the small-data rate
    ("30", 5000, "light-crop-flip", 64, 4, 0.15),  # small data, long training: the wider one
    ("1", 50_000, "flip", 32, 4, 1.0),
    ("2", 50_000, "light-crop-flip", 32, 4, 1.0),
])
def test_a_short_training_mirrors_without_shifting_on_the_narrower_network(epochs, train_size, augment, width, growth, lr):
    filled = recipes.fill(resolved("-e", epochs), "speedrun", colour=True, train_size=train_size)
    assert (filled["augment"], filled["width"], filled["growth"], filled["lr"]) == (augment, width, growth, lr)
    assert recipes.fill(resolved("-e", epochs, "--growth", "2"), "speedrun", colour=True, train_size=train_size)["growth"] == 2
    assert recipes.fill(resolved("-e", epochs, "--augment", "crop-flip"), "speedrun", colour=True, train_size=train_size)["augment"] == "crop-flip"
    assert recipes.fill(resolved("-e", epochs), "classic", colour=True, train_size=train_size)["augment"] is None  # the arch's own


def test_only_dlbhc_takes_the_classroom_runs_rate_and_network():
    codeword = recipes.fill(resolved("-e", "5", "--method", "hadamard"), "speedrun", colour=True, train_size=5000)
    assert (codeword["growth"], codeword["lr"], codeword["width"]) == (4, 0.15, 32)


def test_each_method_takes_its_own_loss_scale_from_the_recipe():
    def loss_scale(method, *flags):
        return recipes.fill(resolved("--method", method, *flags), "speedrun", colour=True, train_size=50_000)["loss_scale"]

    assert [loss_scale(method) for method in ("dlbhc", "dbr", "hadamard", "dhn", "dnnh")] == [1.0, 8.0, 8.0, 1.0, 0.1]
    assert loss_scale("dbr", "--loss-scale", "2") == 2.0
    assert recipes.fill(resolved("--arch", "dbr"), "dbr", colour=True, train_size=50_000)["loss_scale"] == 1.0


def test_the_dbr_recipe_keeps_deepbinaryrepres_settings():
    config = recipes.fill(resolved("--arch", "dbr"), "dbr", colour=True, train_size=50_000)
    expected = {"epochs": 20, "batch_size": 32, "optimizer": "adadelta", "lr": None, "schedule": "constant", "augment": "none", "tta": "none"}
    assert {key: config[key] for key in expected} == expected


def test_settings_that_do_not_apply_stay_unset():
    config = recipes.fill(resolved("--arch", "dbr", "--method", "dbr"), "speedrun", colour=False, train_size=50_000)
    assert config["width"] is None and config["growth"] is None  # no width to set
    assert recipes.fill(resolved("--arch", "resnet"), "speedrun", colour=True, train_size=50_000)["growth"] is None  # resnet doubles
    assert config["label_smoothing"] is None  # not dlbhc
    assert config["tta"] == "none"  # grey images are not mirrored


def test_the_airbench_recipe_is_airbench94_muons_craft_at_any_training_size():
    for train_size in (5000, 50_000):  # no small-data or short-training overrides
        config = recipes.fill(resolved("--recipe", "airbench"), "airbench", colour=True, train_size=train_size)
        assert (config["optimizer"], config["schedule"], config["batch_size"], config["width"]) == ("muon", "linear", 2000, 64)
        assert (config["flip"], config["pooling"], config["init"], config["whitening"]) == ("alternating", "floor", "pytorch", "standardised")
    assert recipes.fill(resolved("--recipe", "airbench", "--pooling", "same"), "airbench", colour=True, train_size=50_000)["pooling"] == "same"
    speedrun = recipes.fill(resolved(), "speedrun", colour=True, train_size=50_000)
    assert (speedrun["flip"], speedrun["filter_lr"], speedrun["whitening_bias_epochs"]) == ("random", None, None)
    grey = recipes.fill(resolved("--recipe", "airbench"), "airbench", colour=False, train_size=50_000)
    assert grey["flip"] == "random"  # grey images are never mirrored
    resnet = recipes.fill(resolved("--arch", "resnet", "--recipe", "airbench"), "airbench", colour=True, train_size=50_000)
    assert resnet["pooling"] is resnet["init"] is resnet["batch_norm_epsilon"] is None  # the speed-run network's own craft


@pytest.mark.slow
def test_the_airbench_recipe_trains_end_to_end(tiny_tree, tmp_path):
    out = tmp_path / "run"
    flags = ("--recipe", "airbench", "-e", "2", "--batch-size", "40", "--whitening-bias-epochs", "1")
    config = train_tiny_speedrun(tiny_tree, out, *flags)
    assert (config["optimizer"], config["flip"], config["pooling"]) == ("muon", "alternating", "floor")
    metrics = rundir.read_json(out / rundir.METRICS_FILE)
    assert metrics["mAP@120"] > 0.5  # four easy classes: chance is about 0.25
    encoder = keras.saving.load_model(out / rundir.MODEL_FILE)
    assert isinstance(encoder.optimizer, train.Muon) and encoder.get_layer("block1_norm1_bn").epsilon == 1e-12
    assert "random_flip" not in {layer.name for layer in encoder.layers}  # the feed mirrors


def test_tta_on_grey_images_is_a_usage_error():
    with pytest.raises(options.UsageError, match="--tta averages each image with its mirror image: it applies to colour images only"):
        retrieval._resolve_recipe(resolved("--tta", "flip"), colour=False, train_size=100)
    assert retrieval._resolve_recipe(resolved(), colour=False, train_size=100)["tta"] == "none"
    assert retrieval._resolve_recipe(resolved("--no-tta"), colour=True, train_size=100)["tta"] == "none"


def test_small_and_short_trainings_encode_with_flips_only():
    small = recipes.fill(resolved(), "speedrun", colour=True, train_size=5000)
    short = recipes.fill(resolved("-e", "1"), "speedrun", colour=True, train_size=50_000)
    assert small["tta"] == short["tta"] == "flip"
    assert recipes.fill(resolved("--tta", "flip-shift"), "speedrun", colour=True, train_size=5000)["tta"] == "flip-shift"


def test_an_unknown_tta_mode_is_a_usage_error():
    with pytest.raises(options.UsageError, match="--tta must be one of none, flip, flip-shift, got 'crops'"):
        options.resolve_args(options.build_parser().parse_args(["--tta", "crops"]))


def train_tiny_speedrun(tiny_tree, out, *flags):
    """Trains the default arch and recipe at width 8 on the tiny tree; returns the run's config."""
    argv = ["--data-dir", str(tiny_tree), "-l", "12", "-s", "0", "--out", str(out), "--width", "8", *flags]
    assert retrieval.main(argv) == 0
    return rundir.read_json(out / rundir.CONFIG_FILE)


@pytest.mark.slow
def test_the_speedrun_recipe_trains_end_to_end_and_is_recorded(tiny_tree, tmp_path):
    out = tmp_path / "run"
    config = train_tiny_speedrun(tiny_tree, out, "-e", "5", "--batch-size", "24")
    assert (config["recipe"], config["arch"], config["method"], config["schedule"]) == ("speedrun", "speedrun", "dlbhc", "triangular")
    metrics = rundir.read_json(out / rundir.METRICS_FILE)
    assert metrics["recipe"] == "speedrun" and metrics["label_smoothing"] == 0.2
    assert metrics["mAP@120"] > 0.6  # four easy classes: chance is about 0.25
    encoder = keras.saving.load_model(out / rundir.MODEL_FILE)
    # A short training on small data, as the classroom run: later blocks of 3x the first's channels.
    assert encoder.get_layer("block1_conv1").filters == 8 and encoder.get_layer("block2_conv1").filters == 8 * config["growth"] == 24
    assert config["augment"] == "flip" and "random_shift" not in {layer.name for layer in encoder.layers}  # small data: no shifts
    # Adapted to the training images before training, and never trained: its kernel is not zero.
    assert np.abs(keras.ops.convert_to_numpy(encoder.get_layer("whitening").kernel)).max() > 0
    assert isinstance(encoder.optimizer, train.RateScaleSGD) and encoder.optimizer.norm_bias_lr_scale == 64.0


def test_a_recipe_rate_is_rescaled_to_the_class_batches_and_a_given_rate_kept():
    class_batches = {**resolved("--method", "dnnh"), "classes_per_batch": 8, "batch_size": 32}  # as the run resolves them
    assert recipes.fill(class_batches, "speedrun", colour=True, train_size=50_000)["lr"] == pytest.approx(1.0 * 32 / 1000)
    assert recipes.fill({**class_batches, "lr": 1.0}, "speedrun", colour=True, train_size=50_000)["lr"] == 1.0
    assert recipes.fill(class_batches, "classic", colour=True, train_size=50_000)["lr"] is None


@pytest.mark.slow
def test_dnnh_trains_at_the_recipe_rate_scaled_to_its_class_batches(tiny_tree, tmp_path):
    config = train_tiny_speedrun(tiny_tree, tmp_path / "run", "-e", "1", "--method", "dnnh")
    small_data = recipes.SMALL_DATA  # 120 tiny images: the recipe's small-data batches and rate
    assert config["batch_size"] == 16  # 4 classes (all the tiny tree has) x 4 images
    assert config["lr"] == pytest.approx(small_data["lr"] * 16 / small_data["batch_size"])


# --- the speed-run network and optimiser -------------------------------------------------


# --- on-device augmentation ---------------------------------------------------------------


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


# --- bench/train_bench.py -----------------------------------------------------------------
