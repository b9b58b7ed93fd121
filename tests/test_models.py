"""Tests for models.py: every encoder from raw pixels to sigmoid bits, the speed-run network, on-device augmentation, flip TTA, saving and loading."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import methods
import models
import vocabulary

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", vocabulary.SCRATCH_ARCHS)
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3), (20, 24, 4)])
def test_encoder_takes_any_image_shape_and_ends_in_sigmoid_bits(arch, input_shape):
    encoder = models.build_encoder(arch, input_shape, bits=12)
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, *input_shape)).astype("float32")
    latent = keras.ops.convert_to_numpy(encoder(pixels, training=False))
    assert latent.shape == (3, 12)
    assert np.all((latent > 0) & (latent < 1))
    assert encoder.get_layer(models.LATENT_LAYER).units == 12


def test_dbr_arch_follows_the_original_layers():
    encoder = models.build_encoder("dbr", (32, 32, 3), bits=48, extra_layer=True)
    names = [layer.name for layer in encoder.layers]
    assert names[:3] == ["pixels", "scale_to_unit", "conv1a"]
    assert encoder.get_layer("conv1a").padding == "same" and encoder.get_layer("conv1b").padding == "valid"
    assert encoder.get_layer("conv2a").filters == 64
    assert encoder.get_layer("dropout1").rate == 0.25 and encoder.get_layer("dropout_dense").rate == 0.5
    assert encoder.get_layer("extra_dense").units == models.EXTRA_LAYER_UNITS
    assert names[-1] == models.LATENT_LAYER


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch='vgg'"):
        models.build_encoder("vgg", (32, 32, 3), bits=48)


def test_dlbhc_model_saves_and_loads_with_the_latent_layer(tmp_path):
    method = methods.make_method("dlbhc", num_classes=10, bits=16)
    model = method.training_model(models.build_encoder("dbr", (28, 28, 1), bits=16))
    model.compile(optimizer="adam", loss=method.loss())
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 28, 28, 1)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-6)
    encoder = models.encoder_of(loaded)
    assert encoder.output.shape == (None, 16)


# --- keras.applications backbones ---------------------------------------------------------
# Built at input_size 32 (the smallest keras.applications takes) to keep the tests fast on a CPU.


# --- weights ------------------------------------------------------------------------------


# Keras 3.15 warns about containers of a functional model's .weights.h5 that it does not need.


# --- a smaller learning rate on the backbone ------------------------------------------------


# --- the command line -----------------------------------------------------------------------


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


def test_growth_sets_the_speedrun_networks_later_blocks():
    def block_filters(**sizes):
        encoder = models.build_encoder("speedrun", (32, 32, 3), 8, **sizes)
        return [encoder.get_layer(f"block{block}_conv2").filters for block in (1, 2, 3)]

    assert block_filters(width=4, growth=3) == [4, 12, 12]
    assert block_filters(width=4) == [4, 4 * models.SPEEDRUN_GROWTH, 4 * models.SPEEDRUN_GROWTH]
    with pytest.raises(ValueError, match="`growth` applies to arch 'speedrun'"):
        models.build_encoder("resnet", (32, 32, 3), 8, growth=3)
    with pytest.raises(ValueError, match="growth=0"):
        models.build_encoder("speedrun", (32, 32, 3), 8, growth=0)


def test_speedrun_craft_sets_pooling_batch_norm_and_initialisation():
    def encoder(**craft):
        return models.build_encoder("speedrun", (32, 32, 3), 8, width=4, craft=models.SpeedrunCraft(**craft))

    assert encoder().get_layer("block3_norm2_bn").output.shape[1:3] == (4, 4)  # 31 -> 16 -> 8 -> 4
    floor = encoder(pooling="floor", batch_norm_epsilon=1e-12)
    assert floor.get_layer("block3_norm2_bn").output.shape[1:3] == (3, 3)  # 31 -> 15 -> 7 -> 3, as airbench's
    assert floor.get_layer("block1_norm1_bn").epsilon == 1e-12
    spreads = {init: keras.ops.convert_to_numpy(encoder(init=init).get_layer("block2_conv1").kernel)[..., 4:].std() for init in ("he", "pytorch")}
    assert spreads["pytorch"] ** 2 / spreads["he"] ** 2 == pytest.approx(1 / 6, rel=0.1)  # PyTorch's default: a sixth of He's variance
    with pytest.raises(ValueError, match="pooling='round'"):
        encoder(pooling="round")
    with pytest.raises(ValueError, match="`craft` applies to arch 'speedrun'"):
        models.build_encoder("resnet", (32, 32, 3), 8, craft=models.SpeedrunCraft())


def test_standardised_whitening_is_the_whitening_of_standardised_pixels():
    images = np.random.default_rng(3).random((30, 10, 10, 3)) * np.array([0.2, 1.0, 0.5])
    std = images.std(axis=(0, 1, 2))
    standardised, plain = models.PatchWhitening(standardise=True), models.PatchWhitening()
    standardised.adapt(images.astype("float32"))
    plain.adapt((images / std).astype("float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(standardised(images.astype("float32"))),
                               keras.ops.convert_to_numpy(plain((images / std).astype("float32"))), atol=2e-3)
    different = models.PatchWhitening()
    different.adapt(images.astype("float32"))  # the epsilon weighs otherwise on unscaled pixels
    assert not np.allclose(keras.ops.convert_to_numpy(different.kernel), keras.ops.convert_to_numpy(standardised.kernel), atol=1e-2)


def test_alternating_flip_leaves_mirroring_to_the_data_feed():
    names = {layer.name for layer in models.build_encoder("speedrun", (32, 32, 3), 8, augment="light-crop-flip", flip="alternating").layers}
    assert "random_shift" in names and "random_flip" not in names


def test_predict_batch_by_batch_gives_model_predicts_outputs():
    inputs = keras.Input((4, 4, 3))
    hidden = keras.layers.Dense(5)(keras.layers.Flatten()(inputs))
    one, two = keras.Model(inputs, hidden), keras.Model(inputs, [hidden, keras.layers.Dense(2)(hidden)])
    images = np.random.default_rng(0).random((21, 4, 4, 3), dtype="float32")  # a last batch of 5
    np.testing.assert_array_equal(models.predict(one, images, 8), one.predict(images, batch_size=8, verbose=0))
    for ours, keras_own in zip(models.predict(two, images, 8), two.predict(images, batch_size=8, verbose=0), strict=True):
        np.testing.assert_array_equal(ours, keras_own)


def test_flip_tta_averages_an_image_and_its_mirror_image():
    inputs = keras.Input((2, 3, 1))
    left_weighted = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(
        keras.layers.Flatten()(inputs * np.array([1.0, 0.0, 0.0], "float32")[None, None, :, None])))
    images = np.array([[[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]]], "float32")
    # Left column only: 1 + 4 = 5 plain, 3 + 6 = 9 mirrored; the mean is 7.
    assert models.predict(left_weighted, images, 8)[0, 0] == pytest.approx(5.0)
    assert models.encode(left_weighted, images, "flip", 8)[0, 0] == pytest.approx(7.0)
    assert models.encode(left_weighted, images, True, 8)[0, 0] == pytest.approx(7.0)  # a config written before the modes


def test_flip_shift_tta_adds_the_one_pixel_shifts_at_a_quarter_each():
    inputs = keras.Input((3, 3, 1))
    top_left = keras.Model(inputs, keras.layers.Flatten()(inputs)[:, :1])
    images = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)  # rows 0 1 2 / 3 4 5 / 6 7 8
    # Top-left pixel: plain 0, mirrored 2 (mean 1); shifted down-right, reflected: 4, mirrored 4
    # (mean 4); shifted up-left: 4, mirrored 4 (mean 4). Weighted: 0.5 * 1 + 0.25 * 4 + 0.25 * 4 = 2.5.
    assert models.encode(top_left, images, "flip-shift", 8)[0, 0] == pytest.approx(2.5)
    assert models.encode(top_left, images, "none", 8)[0, 0] == pytest.approx(0.0)


def test_tta_augments_in_chunks_with_the_same_result(monkeypatch):
    encoder = models.build_encoder("dbr", (16, 16, 3), 8)
    images = np.random.default_rng(0).integers(0, 255, size=(10, 16, 16, 3)).astype("uint8")
    whole = models.encode(encoder, images, "flip-shift", 4)
    monkeypatch.setattr(models, "TTA_CHUNK", 3)  # 4 chunks, the last of 1 image
    np.testing.assert_allclose(models.encode(encoder, images, "flip-shift", 4), whole, rtol=1e-6)
    assert whole.shape == (10, 8)


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
