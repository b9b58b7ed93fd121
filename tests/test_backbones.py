"""Tests for backbones.py: keras.applications trunks from raw pixels, their preprocessing, weights files and offline ImageNet weights, and the command line with a backbone."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import backbones
import models
import retrieval
import rundir
import train
from cli import fails_with

TINY_BACKBONE_SIZE = 32


PREPROCESS_INPUT = {
    "resnet50": keras.applications.resnet50.preprocess_input,
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
    "efficientnetb0": keras.applications.efficientnet.preprocess_input,
    "vgg16": keras.applications.vgg16.preprocess_input,
}


def random_pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype("float32")


def tiny_backbone_encoder(arch="mobilenetv2", input_shape=(32, 32, 3), bits=8, **options):
    return models.build_encoder(arch, input_shape, bits, input_size=TINY_BACKBONE_SIZE, **options)


@pytest.mark.slow
@pytest.mark.parametrize("arch", tuple(backbones.APPLICATIONS))
def test_application_backbone_builds_from_raw_pixels_to_sigmoid_bits(arch):
    encoder = tiny_backbone_encoder(arch, input_shape=(24, 40, 3), bits=12)
    latent = keras.ops.convert_to_numpy(encoder(random_pixels((2, 24, 40, 3)), training=False))
    assert latent.shape == (2, 12) and np.all((latent > 0) & (latent < 1))
    names = [layer.name for layer in encoder.layers]
    preprocessing = [layer.name for layer in backbones.backbone_preprocessing(arch)]
    assert names == ["pixels", "random_flip", "resize", *preprocessing, backbones.BACKBONE_LAYER, "global_pool", models.LATENT_LAYER]
    assert encoder.get_layer("resize").output.shape == (None, TINY_BACKBONE_SIZE, TINY_BACKBONE_SIZE, 3)
    paths = [variable.path for variable in encoder.trainable_variables]
    assert paths[-2:] == ["latent/kernel", "latent/bias"]
    assert all(backbones.in_backbone(path) for path in paths[:-2]) and not backbones.in_backbone(paths[-1])


@pytest.mark.parametrize("arch", tuple(backbones.APPLICATIONS))
def test_preprocessing_layers_match_keras_preprocess_input(arch):
    pixels = random_pixels((2, 5, 7, 3))
    x = pixels
    for layer in backbones.backbone_preprocessing(arch):
        x = layer(x)
    expected = PREPROCESS_INPUT[arch](pixels.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(x), expected, atol=1e-5)


def test_grey_images_are_repeated_to_three_channels():
    encoder = tiny_backbone_encoder(input_shape=(28, 28, 1))
    assert "random_flip" not in [layer.name for layer in encoder.layers]  # digits are not mirrored
    grey = random_pixels((2, 28, 28, 1))
    rgb = keras.Model(encoder.input, encoder.get_layer("grey_to_rgb").output)(grey)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(rgb), np.repeat(grey, 3, axis=-1))
    assert encoder(grey).shape == (2, 8)


@pytest.mark.slow
def test_frozen_backbone_is_not_trained_and_runs_in_inference_mode(tmp_path):
    encoder = tiny_backbone_encoder(input_shape=(32, 32, 1), freeze_backbone=True)
    assert [variable.path for variable in encoder.trainable_variables] == ["latent/kernel", "latent/bias"]
    backbone = encoder.get_layer(backbones.BACKBONE_LAYER)
    pixels = random_pixels((4, 32, 32, 3)) / 127.5 - 1
    # Batch norm on its moving statistics even in training mode: the same output either way.
    np.testing.assert_allclose(backbone(pixels, training=True), backbone(pixels, training=False), atol=1e-6)
    encoder.save(tmp_path / "frozen.keras")
    loaded = keras.saving.load_model(tmp_path / "frozen.keras")
    assert [variable.path for variable in loaded.trainable_variables] == ["latent/kernel", "latent/bias"]


def test_unfrozen_backbone_trains_in_training_mode():
    backbone = tiny_backbone_encoder(input_shape=(32, 32, 1)).get_layer(backbones.BACKBONE_LAYER)
    pixels = random_pixels((4, 32, 32, 3)) / 127.5 - 1
    assert not np.allclose(backbone(pixels, training=True), backbone(pixels, training=False), atol=1e-3)


@pytest.mark.parametrize(
    "arch, options, message",
    [
        ("dbr", {"weights": "imagenet"}, "`weights` applies to the keras.applications archs"),
        ("resnet", {"freeze_backbone": True}, "Received: freeze_backbone=True"),
        ("mobilenetv2", {"input_shape": (20, 24, 4)}, r"Received: input_shape=\(20, 24, 4\)"),
        ("mobilenetv2", {"input_size": 16}, "Received: input_size=16"),
    ],
)
def test_backbone_options_are_checked(arch, options, message):
    options = {"input_shape": (32, 32, 3), **options}
    with pytest.raises(ValueError, match=message):
        models.build_encoder(arch, options.pop("input_shape"), 8, **options)


def failing_download(*args, **kwargs):
    """What Keras raises for a download without a connection (a bare Exception)."""
    url = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    raise Exception(f"URL fetch failure on {url}: None -- [Errno -2] Name or service not known")


@pytest.fixture
def offline(monkeypatch):
    from keras.src.utils import file_utils  # keras.applications downloads through this module's get_file

    monkeypatch.setattr(file_utils, "get_file", failing_download)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")  # 32: MobileNetV2 picks its 224 file
def test_offline_imagenet_weights_say_how_to_pass_a_file(offline):
    with pytest.raises(backbones.WeightsError) as error:
        models.build_encoder("mobilenetv2", (32, 32, 3), 8, weights="imagenet")
    message = str(error.value)
    assert "offline" in message and "--weights PATH" in message and "\n" not in message
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in message


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_weights_file_is_loaded_into_the_backbone(tmp_path):
    network = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    network.save_weights(tmp_path / "mobilenetv2.weights.h5")
    encoder = tiny_backbone_encoder(weights=str(tmp_path / "mobilenetv2.weights.h5"))
    loaded = encoder.get_layer(backbones.BACKBONE_LAYER).network
    for expected, actual in zip(network.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual))
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(tmp_path / "vgg16.weights.h5")
    with pytest.raises(backbones.WeightsError, match="Could not load the weights file"):
        tiny_backbone_encoder(weights=str(tmp_path / "vgg16.weights.h5"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_efficientnet_weights_file_gets_the_imagenet_input_scaling(tmp_path):
    network = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    network.save_weights(tmp_path / "efficientnetb0.weights.h5")  # input normalisation variance 1
    encoder = tiny_backbone_encoder("efficientnetb0", weights=str(tmp_path / "efficientnetb0.weights.h5"))
    loaded = encoder.get_layer(backbones.BACKBONE_LAYER).network
    normalization = next(layer for layer in loaded.layers if isinstance(layer, keras.layers.Normalization))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(normalization.variance).ravel(), backbones.IMAGENET_STDDEV_RGB, rtol=1e-6)


@pytest.fixture(scope="module")
def two_class_tree(tmp_path_factory):
    """An image-folder tree `train/<class>/*.png`, `test/<class>/*.png`: 2 classes, 32x32 RGB."""
    root = tmp_path_factory.mktemp("two_classes")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("test", 2)):
        for class_index, name in enumerate(("dark", "light")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for item in range(per_class):
                pixels = rng.integers(0, 100, size=(32, 32, 3)) + 150 * class_index
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{item}.png")
    return root


def backbone_argv(tree, out, *extra):
    return ["--data-dir", str(tree), "--arch", "mobilenetv2", "--backbone-size", "32", "-l", "8", "-e", "1", "-s", "0", "-t", "all", "--out", str(out), *extra]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "dbr", "--weights", "imagenet"], "--weights imagenet applies to the keras.applications archs (resnet50, mobilenetv2, efficientnetb0, vgg16) only, not --arch dbr"),
        (["--arch", "resnet", "--freeze-backbone"], "--freeze-backbone applies to the keras.applications archs"),
        (["--arch", "resnet", "--backbone-size", "64"], "--backbone-size applies to the keras.applications archs"),
        (["--arch", "resnet50", "--weights", "/no/such/weights.h5"], "--weights must be imagenet, none or a weights file; no file /no/such/weights.h5"),
        (["--arch", "vgg16", "--backbone-size", "16"], "--backbone-size must be at least 32, got 16"),
        (["--arch", "vgg16", "--backbone-lr-scale", "0"], "--backbone-lr-scale must be positive, got 0.0"),
        (["--arch", "vgg16", "--backbone-lr-scale", "0.5", "--freeze-backbone"], "contradict each other"),
    ],
)
def test_bad_backbone_arguments_exit_2(capsys, tmp_path, argv, message):
    fails_with(capsys, [*argv, "--out", str(tmp_path / "run")], message)


def test_missing_weights_file_fails_before_keras_is_imported(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, retrieval\n"
        "try:\n"
        f"    retrieval.main(['--arch', 'resnet50', '--weights', 'missing.h5', '--out', {str(tmp_path / 'run')!r}])\n"
        "except SystemExit as error:\n"
        "    print(error.code, 'keras' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=retrieval.__file__.rsplit("/", 1)[0], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]
    assert "no file missing.h5" in result.stderr


@pytest.mark.slow
def test_cli_trains_a_mobilenetv2_backbone(two_class_tree, tmp_path, private_cache):
    out = tmp_path / "mobilenetv2"
    assert retrieval.main(backbone_argv(two_class_tree, out, "--weights", "none")) == 0
    config = json.loads((out / rundir.CONFIG_FILE).read_text())
    assert config["weights"] == "none" and config["backbone_size"] == 32
    assert config["backbone_lr_scale"] == 1.0 and config["freeze_backbone"] is False  # random weights: full rate
    metrics = json.loads((out / rundir.METRICS_FILE).read_text())
    assert metrics["arch"] == "mobilenetv2" and 0 <= metrics["mAP@12"] <= 1
    model = keras.saving.load_model(out / rundir.MODEL_FILE)
    assert isinstance(model.optimizer, train.RateScaleAdam)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
def test_cli_offline_imagenet_weights_exit_2(two_class_tree, tmp_path, private_cache, offline, capsys):
    stderr = fails_with(capsys, backbone_argv(two_class_tree, tmp_path / "offline"), "--weights PATH")
    message = stderr.strip().splitlines()[-1]  # after argparse's usage lines
    assert message.startswith("retrieval.py: error: Could not download the ImageNet weights of mobilenetv2 (")
    assert "offline" in message and "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in message
