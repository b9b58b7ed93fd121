"""The methods `dhn`, `dnnh` and `hadamard`: losses against hand-computed values, the P x K batches,
Hadamard codewords, saving and loading compiled losses, label handling, and the CLI end to end."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import codewords
import methods
import models
import retrieval
import rundir
from cli import TINY_CLASSES, fails_with, tiny_argv


def loss_value(loss, labels, latent):
    return float(keras.ops.convert_to_numpy(loss(np.asarray(labels), np.asarray(latent, dtype="float32"))))


# --- dhn: pairwise likelihood + quantisation ------------------------------------------------


@pytest.mark.parametrize(
    "labels, quantization_weight, expected",
    [
        # latent A = [1, 1, 1] -> u_A = [1, 1, 1]; latent B = [1, 1, 0.25] -> u_B = [1, 1, -0.5].
        # <u_A, u_B> = 1 + 1 - 0.5 = 1.5, theta = 0.75. Same label, s = 1:
        #   pair loss = log(1 + e^0.75) - 0.75 = log(1 + e^-0.75) = 0.386871 (both ordered pairs).
        # Quantisation, mean over bits: A: log cosh(0) = 0; B: log cosh(|-0.5| - 1) / 3 =
        #   log cosh(0.5) / 3 = 0.120115 / 3 = 0.040038; mean over the 2 codes = 0.020019.
        ([0, 0], 1.0, 0.386871 + 0.020019),
        ([0, 0], 10.0, 0.386871 + 10 * 0.020019),
        ([0, 0], 0.0, 0.386871),
        # Different labels, s = 0: pair loss = log(1 + e^0.75) = 1.136871.
        ([0, 1], 0.5, 1.136871 + 0.5 * 0.020019),
    ],
)
def test_dhn_loss_matches_hand_computation(labels, quantization_weight, expected):
    latent = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.25]]
    loss = methods.PairwiseLikelihoodLoss(quantization_weight)
    assert loss_value(loss, labels, latent) == pytest.approx(expected, abs=1e-5)


def test_dhn_multi_hot_labels_mean_shares_a_label():
    # u0 = [1, 1], u1 = [1, -1], u2 = [-1, -1]; thetas: (0,1) 0, (0,2) -1, (1,2) 0.
    # Labels {0}, {0, 1}, {2}: only 0 and 1 share one. Pair losses: (0,1) log 2 - 0 = 0.693147,
    # (0,2) log(1 + e^-1) = 0.313262, (1,2) log 2 = 0.693147; the mean over the 6 ordered pairs
    # (each value twice) is 1.699556 / 3 = 0.566519. Codes at +-1: no quantisation loss.
    latent = [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    multi_hot = [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    loss = methods.PairwiseLikelihoodLoss(1.0)
    assert loss_value(loss, methods.similarity_labels(multi_hot, 3), latent) == pytest.approx(0.566519, abs=1e-5)
    # The same similarities from integer labels.
    assert loss_value(loss, methods.similarity_labels([0, 0, 2], 3), latent) == pytest.approx(0.566519, abs=1e-5)


@pytest.mark.parametrize("quantization_weight", [0.0, 0.5, 1.0, 10.0])
def test_dhn_is_finite_for_huge_inner_products(quantization_weight):
    # 256 bits at +-1: theta = <u_i, u_j> / 2 reaches +-128, where exp overflows float32.
    bits = 256
    code = np.random.default_rng(0).integers(0, 2, size=bits).astype("float32")
    latent = np.stack([code, code, 1 - code])  # 0 and 1 identical (theta 128), 2 opposite (theta -128)
    loss = methods.PairwiseLikelihoodLoss(quantization_weight)
    # Labels 0, 1, 0. Pairs (0,1), (1,0): dissimilar identical codes, softplus(128) = 128 each;
    # (0,2), (2,0): similar opposite codes, softplus(-128) + 128 = 128 each; (1,2), (2,1): dissimilar
    # opposite codes, softplus(-128) = e^-128 ~ 0. Mean over the 6 ordered pairs: 4 * 128 / 6.
    assert loss_value(loss, [0, 1, 0], latent) == pytest.approx(4 * 128 / 6, rel=1e-6)
    # Similar identical codes and dissimilar opposite ones: every pair's loss is ~0.
    assert loss_value(loss, [0, 0, 1], latent) == pytest.approx(0.0, abs=1e-5)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(latent)
        with tf.GradientTape() as tape:
            value = loss(np.array([0, 1, 0]), variable)
        assert np.all(np.isfinite(tape.gradient(value, variable).numpy()))


def test_dhn_weight_is_checked():
    with pytest.raises(ValueError, match="Received: quantization_weight=-1"):
        methods.PairwiseLikelihoodLoss(-1)
    with pytest.raises(ValueError, match="`quantization_weight` must be 0 or more"):
        methods.make_method("dhn", 10, 48, quantization_weight=float("nan"))


# --- dnnh: triplet ranking ------------------------------------------------------------------


def test_dnnh_loss_matches_hand_computation():
    # u0 = [1, 1], u1 = [1, -1], u2 = [-1, 1]; labels 0, 0, 1; margin 2.
    # Squared distances: d01 = 4, d02 = 4, d12 = 8. Valid triplets (a, p, n): (0, 1, 2) and (1, 0, 2).
    # (0, 1, 2): max(0, 4 - 4 + 2) = 2; (1, 0, 2): max(0, 4 - 8 + 2) = 0. Mean over both valid: 1.0
    # (over the positive ones only it would be 2.0).
    latent = [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    assert loss_value(methods.TripletRankingLoss(margin=2.0), [0, 0, 1], latent) == pytest.approx(1.0, abs=1e-6)


def test_dnnh_multi_hot_labels_mean_shares_a_label():
    # Same codes; labels {0}, {0, 1}, {1}: 0~1 and 1~2 share a label, 0 and 2 do not.
    # Valid triplets: (0, 1, 2): 4 - 4 + 2 = 2; (2, 1, 0): d21 - d20 + 2 = 8 - 4 + 2 = 6.
    # Anchor 1 has no negative. Mean: 4.0.
    latent = [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    labels = methods.similarity_labels([[1, 0], [1, 1], [0, 1]], 2)
    assert loss_value(methods.TripletRankingLoss(margin=2.0), labels, latent) == pytest.approx(4.0, abs=1e-6)


def test_dnnh_averages_over_valid_triplets_only():
    rng = np.random.default_rng(3)
    latent = rng.uniform(size=(6, 4)).astype("float32")
    labels = np.array([0, 0, 1, 1, 1, 2])
    margin = 1.5
    codes = 2 * latent - 1
    distance = ((codes[:, None] - codes[None]) ** 2).sum(-1)
    hinges = [
        max(0.0, distance[a, p] - distance[a, n] + margin)
        for a in range(6) for p in range(6) for n in range(6)
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]
    ]
    assert len(hinges) == 2 * 4 + 6 * 3 + 0  # class 0: 2 anchors x 1 positive x 4 negatives; class 1: 3 x 2 x 3
    loss = methods.TripletRankingLoss(margin)
    assert loss_value(loss, labels, latent) == pytest.approx(np.mean(hinges), rel=1e-5)
    # No valid triplet (a single class, or all distinct): 0, not nan.
    assert loss_value(loss, [1] * 6, latent) == 0.0
    assert loss_value(loss, np.arange(6), latent) == 0.0


def test_dnnh_margin_defaults_to_a_quarter_of_the_bits_and_is_checked():
    assert methods.make_method("dnnh", 10, 48).loss().margin == 12.0
    assert methods.make_method("dnnh", 10, 12, margin=1.0).summary() == {"margin": 1.0}
    with pytest.raises(ValueError, match="Received: margin=0"):
        methods.TripletRankingLoss(0)
    with pytest.raises(ValueError, match="`margin` applies to method 'dnnh' only"):
        methods.make_method("dhn", 10, 48, margin=2.0)


@pytest.mark.slow
def test_losses_give_the_same_values_on_jax():
    pytest.importorskip("jax")
    script = (
        "import numpy as np, methods\n"
        "latent = np.array([[1, 1, 1], [1, 1, 0.25], [0, 0.5, 1]], dtype='float32')\n"
        "print(float(methods.PairwiseLikelihoodLoss(0.5)(np.array([0, 0, 1]), latent)),"
        " float(methods.TripletRankingLoss(1.0)(np.array([0, 0, 1]), latent)))\n"
    )
    environment = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(methods.__file__), env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    on_jax = [float(value) for value in result.stdout.split()]
    latent = np.array([[1, 1, 1], [1, 1, 0.25], [0, 0.5, 1]], dtype="float32")
    here = [loss_value(methods.PairwiseLikelihoodLoss(0.5), [0, 0, 1], latent), loss_value(methods.TripletRankingLoss(1.0), [0, 0, 1], latent)]
    np.testing.assert_allclose(on_jax, here, rtol=1e-5)


# --- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dbr", "hadamard", "dlbhc"])
def test_single_label_methods_refuse_multi_hot_labels(name):
    method = methods.make_method(name, 4, 16)
    with pytest.raises(ValueError, match=r"multi-label \(multi-hot\) data is supported by 'dhn' and 'dnnh' only. Received: labels.shape=\(2, 4\)"):
        method.targets(np.array([[1, 0, 1, 0], [0, 1, 0, 0]]))
    with pytest.raises(ValueError, match="Labels must lie in 0..3"):
        method.targets(np.array([0, 4]))


@pytest.mark.parametrize("name", ["dhn", "dnnh"])
def test_pairwise_methods_accept_integer_and_multi_hot_labels(name):
    method = methods.make_method(name, 3, 16)
    assert method.targets([2, 0]).dtype == np.int32
    np.testing.assert_array_equal(method.targets([[1, 0, 1], [0, 1, 0]]), [[1, 0, 1], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"multi-hot matrix \[n, 3\]. Received: labels.shape=\(2, 2\)"):
        method.targets([[1, 0], [0, 1]])


# --- saving and loading --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, options, loss_class, attribute",
    [("dhn", {"quantization_weight": 0.5}, methods.PairwiseLikelihoodLoss, "quantization_weight"), ("dnnh", {"margin": 3.0}, methods.TripletRankingLoss, "margin")],
)
def test_compiled_custom_loss_survives_save_and_load(tmp_path, name, options, loss_class, attribute):
    method = methods.make_method(name, num_classes=3, bits=8, **options)
    model = method.training_model(models.build_encoder("dbr", (16, 16, 1), bits=8))
    model.compile(optimizer="adam", loss=method.loss())
    pixels = np.random.default_rng(4).integers(0, 256, size=(6, 16, 16, 1)).astype("float32")
    labels = method.targets(np.array([0, 0, 1, 1, 2, 2]))
    model.fit(pixels, labels, epochs=1, verbose=0)  # builds the optimiser, whose state is saved too
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, loss_class) and getattr(loaded.loss, attribute) == next(iter(options.values()))
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(pixels, labels, verbose=0), model.evaluate(pixels, labels, verbose=0), rtol=1e-5)


# --- the command line ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, extra, expected_config, expected_metrics",
    [
        ("dhn", ["--lambda", "0.5"], {"lambda": 0.5, "batch_size": 32, "margin": None}, {"lambda": 0.5}),
        ("dnnh", [], {"margin": 3.0, "classes_per_batch": 4, "images_per_class": 4, "batch_size": 16, "lambda": None}, {"margin": 3.0}),
        ("hadamard", [], {"code_type": None, "lambda": None}, {"codeword_min_distance": 6}),
        ("dlbhc", [], {"label_smoothing": 0.0, "lambda": None, "margin": None}, {}),
    ],
)
def test_each_method_learns_end_to_end(tiny_tree, tmp_path, method, extra, expected_config, expected_metrics):
    out = tmp_path / method
    assert retrieval.main([*tiny_argv(tiny_tree, out), "-e", "2", "--method", method, *extra]) == 0
    metrics = json.loads((out / rundir.METRICS_FILE).read_text())
    chance = 1 / len(TINY_CLASSES)  # four easy classes, equally many
    assert metrics["method"] == method and metrics["mAP@120"] > 0.8 > chance
    assert expected_metrics.items() <= metrics.items()
    config = json.loads((out / rundir.CONFIG_FILE).read_text())
    assert expected_config.items() <= config.items()


def test_default_classes_per_batch_is_clipped_with_a_note():
    notes = []
    config = {"method": "dnnh", "classes_per_batch": None, "images_per_class": 4, "batch_size": None}
    resolved = retrieval._resolve_class_batches(config, np.repeat(np.arange(4), 5), notes.append)
    assert resolved["classes_per_batch"] == 4 and resolved["batch_size"] == 16
    assert notes == ["note: --classes-per-batch 8 clipped to the number of classes, 4"]
    assert retrieval._resolve_class_batches(resolved, np.repeat(np.arange(4), 5), notes.append) == resolved  # a resumed run's


def test_class_batch_sizes_checked_against_the_data_exit_2(capsys, tmp_path, tiny_tree):
    argv = [*tiny_argv(tiny_tree, tmp_path / "a"), "--method", "dnnh"]
    fails_with(capsys, [*argv, "--classes-per-batch", "5"], "--classes-per-batch must be at most the number of classes, 4, got 5")
    fails_with(capsys, [*argv, "--images-per-class", "31"], "--images-per-class must be at most the smallest class's 30 training images, got 31")
    assert not (tmp_path / "a" / rundir.CONFIG_FILE).exists()


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


@pytest.mark.parametrize(
    "bits, expected",
    [
        # 12 bits from H16: rows r, s differ in 4 + 2 = 6 of the first 12 columns when r ^ s has a bit
        # among its two lowest, in 4 when r ^ s is 4 or 8, in 8 when it is 12. Rows at mutual distance
        # >= 6 hold at most 2 of each group with the same two low bits: 8 rows; 10 classes force 4.
        (12, 4),
        (48, 24),  # the first 48 of 64 columns: still half the length for 10 rows
        (24, 12),  # farthest-first row choice (rows 1..10 in order would give 8)
    ],
)
def test_truncated_hadamard_codewords_report_their_min_distance(bits, expected):
    method = methods.make_method("hadamard", num_classes=10, bits=bits)
    assert method.codewords.shape == (10, bits)
    assert method.summary() == {"codeword_min_distance": expected}
    assert codewords.min_distance(method.codewords) == expected
    targets = method.targets(np.array([3, 0, 3]))
    assert targets.dtype == np.float32 and method.loss().name == "mean_squared_error"
    np.testing.assert_array_equal(targets[0], method.codewords[3])


def test_hadamard_refuses_more_classes_than_rows():
    with pytest.raises(ValueError, match="order 8, which has 7 usable rows.*Received: num_classes=10, bits=8"):
        methods.make_method("hadamard", num_classes=10, bits=8)
    assert methods.make_method("hadamard", num_classes=7, bits=8).summary() == {"codeword_min_distance": 4}
