"""Tests for train.py: the optimisers and their rates, schedules, per-variable rate scales, weight averaging and weight decay."""

import keras
import numpy as np
import pytest

import backbones
import train
from test_backbones import random_pixels, tiny_backbone_encoder


@pytest.mark.parametrize("name, rate", [("adadelta", 1.0), ("sgd", 0.01), ("adam", 0.001)])
def test_optimizers_use_the_original_learning_rates(name, rate):
    optimizer = train.make_optimizer(name)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(rate)
    assert float(keras.ops.convert_to_numpy(train.make_optimizer(name, 0.5).learning_rate)) == pytest.approx(0.5)


def test_sgd_is_nesterov_momentum():
    optimizer = train.make_optimizer("sgd")
    assert optimizer.nesterov and optimizer.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("name", tuple(train.OPTIMIZERS))
def test_backbone_variables_take_scaled_steps(name):
    gradient = np.array([0.5, -2.0, 1e-3, 3.0], "float32")
    with keras.name_scope(backbones.BACKBONE_LAYER):
        backbone_weight = keras.Variable(np.ones(4, "float32"), name="kernel")
    head_weight, plain_weight = (keras.Variable(np.ones(4, "float32"), name="kernel") for _ in range(2))
    assert backbone_weight.path == "backbone/kernel" and head_weight.path == "kernel"
    train.make_optimizer(name, backbone_lr_scale=0.1).apply([gradient, gradient], [backbone_weight, head_weight])
    train.make_optimizer(name).apply([gradient], [plain_weight])
    step = {key: 1 - keras.ops.convert_to_numpy(weight) for key, weight in (("backbone", backbone_weight), ("head", head_weight), ("plain", plain_weight))}
    np.testing.assert_allclose(step["head"], step["plain"], rtol=1e-6)
    np.testing.assert_allclose(step["backbone"], 0.1 * step["plain"], rtol=5e-3)
    assert np.all(np.abs(step["plain"]) > 0)


def test_backbone_rate_must_be_positive():
    with pytest.raises(ValueError, match="Received: backbone_lr_scale=0"):
        train.make_optimizer("adam", backbone_lr_scale=0)


@pytest.mark.slow
def test_backbone_rate_optimizer_saves_and_loads_with_the_model(tmp_path):
    # VGG16: the quickest backbone to trace. Grey: no random flip, so the steps repeat exactly.
    encoder = tiny_backbone_encoder("vgg16", input_shape=(32, 32, 1))
    encoder.compile(optimizer=train.make_optimizer("sgd", backbone_lr_scale=0.25, schedule="cosine", total_steps=10), loss="mse")
    pixels, targets = random_pixels((4, 32, 32, 1)), np.random.default_rng(1).random((4, 8)).astype("float32")
    encoder.train_on_batch(pixels, targets)
    encoder.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, train.RateScaleSGD) and loaded.optimizer.backbone_lr_scale == 0.25
    assert [variable.path for variable in loaded.trainable_variables] == [variable.path for variable in encoder.trainable_variables]
    encoder.train_on_batch(pixels, targets)
    loaded.train_on_batch(pixels, targets)
    for expected, actual in zip(encoder.weights, loaded.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected), atol=1e-6)


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


def test_weight_decay_reaches_the_optimizer():
    assert train.make_optimizer("adam", weight_decay=0.01).weight_decay == 0.01
    assert train.make_optimizer("adam").weight_decay is None
