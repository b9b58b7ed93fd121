"""Encoders and training methods: shapes, any input size, the heads, saving and loading."""

import keras
import numpy as np
import pytest

import methods
import models
import train


@pytest.mark.parametrize("arch", models.ARCHS)
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


def test_dbr_method_targets_are_the_class_codewords():
    method = methods.make_method("dbr", num_classes=10, bits=48, code_type="hamming74")
    targets = method.targets(np.array([3, 0, 3]))
    assert targets.shape == (3, 48) and targets.dtype == np.float32
    np.testing.assert_array_equal(targets[0], targets[2])
    # 6 Hamming(7,4) blocks at distance 3, plus a 6-bit remainder lexicode at distance 2.
    assert method.summary()["codeword_min_distance"] == 20
    assert method.training_model("encoder") == "encoder"


def test_dlbhc_loss_is_cross_entropy_on_the_classifier():
    method = methods.make_method("dlbhc", num_classes=3, bits=8)
    probabilities = np.array([[0.5, 0.25, 0.25]], dtype="float32")
    loss = float(method.loss()(method.targets([0]), probabilities))
    assert loss == pytest.approx(-np.log(0.5), rel=1e-5)


def test_code_type_only_for_dbr():
    with pytest.raises(ValueError, match="method 'dbr' only"):
        methods.make_method("dlbhc", 10, 48, code_type="origin")
    with pytest.raises(ValueError, match="method='hashnet'"):
        methods.make_method("hashnet", 10, 48)


@pytest.mark.parametrize("name, rate", [("adadelta", 1.0), ("sgd", 0.01), ("adam", 0.001)])
def test_optimizers_use_the_original_learning_rates(name, rate):
    optimizer = train.make_optimizer(name)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(rate)
    assert float(keras.ops.convert_to_numpy(train.make_optimizer(name, 0.5).learning_rate)) == pytest.approx(0.5)


def test_sgd_is_nesterov_momentum():
    optimizer = train.make_optimizer("sgd")
    assert optimizer.nesterov and optimizer.momentum == pytest.approx(0.9)
