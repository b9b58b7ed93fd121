"""Tests for train.py: the optimisers and their rates, schedules, per-variable rate scales, weight averaging and weight decay."""

import keras
import numpy as np
import pytest

import backbones
import batches
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


def _dense_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros")])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _set(model, value):
    for weight in model.weights:
        weight.assign(np.full(weight.shape, value, "float32"))


def _values(model):
    return [float(keras.ops.convert_to_numpy(weight).ravel()[0]) for weight in model.weights]


def test_lookahead_folds_the_weights_into_their_average_every_few_steps_from_its_start_epoch():
    model = _dense_model()
    steps_per_epoch = train.LOOKAHEAD_EVERY
    lookahead = train.Lookahead(steps_per_epoch=steps_per_epoch, total_steps=100)
    lookahead.set_model(model)
    lookahead.on_epoch_begin(train.LOOKAHEAD_START_EPOCH - 1)
    _set(model, 1.0)
    lookahead.on_train_batch_end(steps_per_epoch - 1)
    assert lookahead.average is None  # too early: the weights move freely
    lookahead.on_epoch_begin(train.LOOKAHEAD_START_EPOCH)
    lookahead.on_train_batch_end(steps_per_epoch - 1)  # starts the average at the weights
    _set(model, 3.0)
    lookahead.on_train_batch_end(0)  # not a multiple of LOOKAHEAD_EVERY steps: untouched
    assert _values(model) == [3.0, 3.0]
    lookahead.on_epoch_begin(train.LOOKAHEAD_START_EPOCH + 1)
    lookahead.on_train_batch_end(steps_per_epoch - 1)
    step = (train.LOOKAHEAD_START_EPOCH + 2) * steps_per_epoch
    expected = 1.0 + (1.0 - lookahead.decay(step)) * (3.0 - 1.0)
    assert _values(model) == pytest.approx([expected, expected])
    _set(model, 5.0)
    lookahead.on_epoch_end(train.LOOKAHEAD_START_EPOCH + 1)  # each epoch ends on the average
    assert _values(model) == pytest.approx([expected, expected])


def test_lookahead_decay_grows_to_its_base_at_the_last_step():
    lookahead = train.Lookahead(steps_per_epoch=10, total_steps=100)
    decays = [lookahead.decay(step) for step in (10, 50, 100)]
    assert decays == sorted(decays) and decays[-1] == pytest.approx(train.LOOKAHEAD_DECAY**train.LOOKAHEAD_EVERY)


def test_the_checkpoint_holds_the_averaged_weights(tmp_path):
    model = _dense_model()
    # 12 steps an epoch: the last steps of the last epoch train past the last averaging.
    x = np.random.default_rng(0).random((48, 2), dtype="float32")
    epochs, batch = train.LOOKAHEAD_START_EPOCH + 1, 4
    lookahead = train.Lookahead(steps_per_epoch=len(x) // batch, total_steps=epochs * len(x) // batch)
    data = batches.ShardedBatches(x, x.sum(axis=1, keepdims=True), batch, replicas=1)
    train.fit_resumable(model, data, epochs=epochs, backup_dir=tmp_path, verbose=0, weight_callbacks=[lookahead])
    averaged = [keras.ops.convert_to_numpy(average) for average in lookahead.average]
    np.testing.assert_allclose([keras.ops.convert_to_numpy(weight) for weight in model.weights][0], averaged[0])
    saved = _dense_model()
    saved.load_weights(train.checkpoints(tmp_path)[-1][1])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(saved.weights[0]), averaged[0])


def test_weight_decay_reaches_the_optimizer():
    assert train.make_optimizer("adam", weight_decay=0.01).weight_decay == 0.01
    assert train.make_optimizer("adam").weight_decay is None


# --- Muon (airbench94_muon's optimiser) ---------------------------------------------------------


def airbench_orthogonalised(gradient, steps=train.NEWTON_SCHULZ_STEPS):
    """airbench94_muon's `zeropower_via_newtonschulz5` in NumPy (float64), on its own layout `[out, in * rows * columns]`."""
    a, b, c = train.NEWTON_SCHULZ_COEFFICIENTS
    x = gradient / (np.linalg.norm(gradient) + 1e-7)
    tall = gradient.shape[0] > gradient.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def airbench_muon_steps(kernel, gradients, rates, momentum=train.MUON_FILTER_MOMENTUM):
    """airbench94_muon's `Muon.step`, step after step, on a Keras kernel `[rows, columns, in, out]` (as PyTorch's `[out, in, rows, columns]`)."""
    weight = kernel.transpose(3, 2, 0, 1).astype("float64")
    buffer = np.zeros_like(weight)
    for gradient, rate in zip(gradients, rates):
        gradient = gradient.transpose(3, 2, 0, 1).astype("float64")
        buffer = momentum * buffer + gradient
        direction = gradient + momentum * buffer
        weight = weight * len(weight) ** 0.5 / np.linalg.norm(weight)
        weight = weight - rate * airbench_orthogonalised(direction.reshape(len(direction), -1)).reshape(direction.shape)
    return weight.transpose(2, 3, 1, 0)


@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (3, 3, 2, 32)])  # wide and tall in airbench's layout
def test_orthogonalised_matches_airbenchs_newton_schulz(shape):
    gradient = np.random.default_rng(0).standard_normal(shape).astype("float32")
    expected = airbench_orthogonalised(gradient.transpose(3, 2, 0, 1).reshape(shape[3], -1).astype("float64"))
    actual = keras.ops.convert_to_numpy(train.orthogonalised(gradient))
    np.testing.assert_allclose(actual, expected.reshape(shape[3], shape[2], 3, 3).transpose(2, 3, 1, 0), atol=2e-5)


def test_muon_steps_a_filter_bank_as_airbench_does():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((3, 3, 4, 8)).astype("float32")
    gradients = [rng.standard_normal(kernel.shape).astype("float32") for _ in range(3)]
    variable = keras.Variable(kernel, name="kernel")
    optimizer = train.make_optimizer("muon", 2.0, "linear", total_steps=4, filter_lr=0.24)
    for gradient in gradients:
        optimizer.apply([gradient], [variable])
    expected = airbench_muon_steps(kernel, gradients, [0.24 * (1 - step / 4) for step in range(3)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, atol=1e-4)


def test_muon_steps_the_other_variables_by_nesterov_sgd():
    gradients = [np.array([0.5, -2.0, 1e-3], "float32"), np.array([1.0, 1.0, -1.0], "float32")]
    bias, reference = (keras.Variable(np.ones(3, "float32"), name="bias") for _ in range(2))
    muon = train.make_optimizer("muon", 0.3, filter_lr=0.24)
    sgd = keras.optimizers.SGD(0.3, momentum=train.MUON_SGD_MOMENTUM, nesterov=True)
    for gradient in gradients:
        muon.apply([gradient], [bias])
        sgd.apply([gradient], [reference])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), keras.ops.convert_to_numpy(reference), rtol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(bias), 1.0)


def test_the_whitening_bias_trains_for_its_first_steps_only_at_a_falling_rate():
    with keras.name_scope("whitening"):
        bias = keras.Variable(np.zeros(2, "float32"), name="bias")
    assert bias.path == "whitening/bias"
    optimizer = train.Muon(learning_rate=1.0, momentum=0.0, whitening_bias_steps=4, whitening_bias_rate=8.0)
    values = []
    for _ in range(6):
        optimizer.apply([np.ones(2, "float32")], [bias])
        values.append(float(keras.ops.convert_to_numpy(bias)[0]))
    steps = -np.diff([0.0, *values])
    np.testing.assert_allclose(steps, [8.0, 6.0, 4.0, 2.0, 0.0, 0.0], atol=1e-6)


def test_a_model_compiled_with_muon_saves_and_loads(tmp_path):
    inputs = keras.Input((6, 6, 2))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3, use_bias=False)(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=train.make_optimizer("muon", 0.1, "linear", total_steps=5, filter_lr=0.2, whitening_bias_steps=2), loss="mse")
    pixels, targets = np.random.default_rng(0).random((4, 6, 6, 2)), np.zeros((4, 3))
    model.train_on_batch(pixels, targets)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, train.Muon)
    assert (loaded.optimizer.filter_rate_scale, loaded.optimizer.whitening_bias_steps) == pytest.approx((2.0, 2))
    model.train_on_batch(pixels, targets)
    loaded.train_on_batch(pixels, targets)
    for expected, actual in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected), atol=1e-6)


def test_muon_needs_a_rate():
    with pytest.raises(ValueError, match="positive `learning_rate`"):
        train.make_optimizer("muon")
