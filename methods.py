"""Training methods: how the latent layer is taught to produce good codes.

A method is a small head on top of the encoder plus a loss and the targets that
loss compares against; everything else (data, optimiser, `fit`, encoding,
evaluation) is shared. `make_method(name, ...)` picks one from `METHODS`.

- `dbr` (DeepBinaryRepre, Lu et al. 2017): the latent layer regresses (mean
  squared error) onto a fixed binary codeword per class (`codewords.py`).
- `dlbhc` (Deep Learning of Binary Hash Codes, Lin et al., CVPRW 2015): the
  latent sigmoid layer feeds a softmax classifier trained with cross-entropy;
  the codes are a by-product of classification.
- `dhn` (Deep Hashing Network, Zhu et al., AAAI 2016): a pairwise
  cross-entropy likelihood on inner products of the relaxed codes of every pair
  in a batch, plus a quantisation penalty (`PairwiseLikelihoodLoss`).
- `dnnh` (Lai et al., CVPR 2015): a triplet ranking loss over every valid
  triplet in a batch of P classes x K images (`TripletRankingLoss`,
  `batches.ClassBalancedBatches`).
- `hadamard`: as `dbr`, with rows of a Hadamard matrix as the class codewords
  (pairwise distance `bits / 2` when `bits` is a power of 2).

Every method works on the latent sigmoid layer; where a loss needs codes in
[-1, 1] it uses the relaxed codes `2 * latent - 1`. Labels are either integer
class indices `[n]` or multi-hot rows `[n, num_classes]`; `dhn` and `dnnh`
accept both and call two images similar when they share at least one label.
The class-codeword methods (`dbr`, `hadamard`) and `dlbhc` need exactly one
class per image and refuse multi-hot labels.

The losses are written with `keras.ops` only, so they run on every backend,
and are registered for serialisation: a `model.keras` saved with one compiled
loads again once this module is imported.
"""

import keras
import numpy as np
from keras import ops

import codewords
import vocabulary

CLASSIFIER_LAYER = "classifier"


# --- labels -------------------------------------------------------------------------


def single_labels(labels, num_classes, method):
    """Integer labels `[n]` in `0..num_classes-1`, or a `ValueError` naming `method`.

    Args:
        labels: array-like of integer class indices, shape `[n]`.
        num_classes: number of classes.
        method: the method's name, for the message.

    Returns:
        int32 array of shape `[n]`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"Method {method!r} needs exactly one integer class label per image, shape [n]; "
            f"multi-label (multi-hot) data is supported by 'dhn' and 'dnnh' only. "
            f"Received: labels.shape={labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must lie in 0..{num_classes - 1}. Received: labels in {labels.min()}..{labels.max()}"
        )
    return labels.astype("int32")


def similarity_labels(labels, num_classes):
    """Labels for the pairwise and triplet losses: integer `[n]` or multi-hot `[n, num_classes]`.

    Args:
        labels: integer class indices `[n]`, or a 0/1 matrix `[n, num_classes]`
            where a row may hold several ones.
        num_classes: number of classes.

    Returns:
        int32 `[n]` for integer labels, float32 `[n, num_classes]` for multi-hot.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return single_labels(labels, num_classes, "dhn/dnnh")
    if labels.ndim != 2 or labels.shape[1] != num_classes or not np.isin(labels, (0, 1)).all():
        raise ValueError(
            f"Labels must be integer class indices [n] or a 0/1 multi-hot matrix [n, {num_classes}]. "
            f"Received: labels.shape={labels.shape}"
        )
    return labels.astype("float32")


def shares_a_label(labels):
    """The `[batch, batch]` 0/1 matrix of "shares at least one label", for integer or multi-hot labels.

    Args:
        labels: tensor of class indices `[batch]` (any dtype holding integers)
            or of multi-hot rows `[batch, num_classes]`.

    Returns:
        float32 tensor `[batch, batch]`; the diagonal is 1 except for a
        multi-hot row with no label at all.
    """
    if len(labels.shape) == 1:
        return ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
    labels = ops.cast(labels, "float32")
    return ops.cast(ops.matmul(labels, ops.transpose(labels)) > 0, "float32")


def relaxed_codes(latent):
    """Maps latent sigmoid activations in [0, 1] to relaxed codes `2 * latent - 1` in [-1, 1]."""
    return 2.0 * latent - 1.0


def _not_self(batch_codes):
    """`[batch, batch]` boolean: True off the diagonal (works for a batch size known only at run time)."""
    index = ops.arange(ops.shape(batch_codes)[0])
    return ops.not_equal(index[:, None], index[None, :])


def _log_cosh(x):
    """log(cosh(x)) without overflow: |x| + softplus(-2|x|) - log 2."""
    magnitude = ops.abs(x)
    return magnitude + ops.softplus(-2.0 * magnitude) - np.log(2.0).astype("float32")


# --- losses -------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="deephash")
class PairwiseLikelihoodLoss(keras.losses.Loss):
    """DHN's loss: pairwise cross-entropy on code inner products plus a quantisation penalty.

    For relaxed codes `u = 2 * latent - 1` and each ordered pair `(i, j)`,
    `i != j`, of a batch, with `theta_ij = 0.5 * <u_i, u_j>` and `s_ij = 1` if
    the two images share a label (else 0):

        loss_ij = log(1 + exp(theta_ij)) - s_ij * theta_ij,

    the negative log-likelihood of `s_ij` under `P(s_ij = 1) = sigmoid(theta_ij)`.
    The factor 0.5 is DHN's: for codes in {-1, +1}^L, `<u_i, u_j> = L - 2 *
    hamming(i, j)`, so `theta_ij = L / 2 - hamming(i, j)` and each bit of
    Hamming distance moves the logit by exactly 1. It is computed as
    `softplus(theta_ij) - s_ij * theta_ij`, exact and finite for any `theta`
    (256 bits at +-1 give `theta` up to 128, where `exp` overflows float32)
    and for any `quantization_weight`.

    Quantisation: DHN's smooth surrogate of the L1 distance to the nearest of
    +-1, `log cosh(|u_ik| - 1)`, averaged over the `L` bits of a code (as the
    DeepHash ports do). Summed over the bits instead, it is `L` times stronger:
    it then saturated the sigmoids within the first steps, before the codes
    depended on the image, and every image got the same code (mAP at chance on
    MNIST after 2 epochs at 16 bits).

    Normalisation: the pair term is averaged over the `batch * (batch - 1)`
    ordered pairs with `i != j` (an image paired with itself is always
    "similar" and would only push its code's norm up); the quantisation term is
    averaged over the `batch` codes and their bits.

    `call` returns one value per image, `mean_j!=i(loss_ij) +
    quantization_weight * quantisation_i`, whose mean over the batch is the
    loss above.

    Args:
        quantization_weight: DHN's lambda, the weight of the quantisation term,
            0 or more. Defaults to 1.0.
        name: loss name. Defaults to `"dhn_loss"`.
        reduction: Keras reduction of the per-image values. Defaults to
            `"sum_over_batch_size"`.
        dtype: computation dtype. Defaults to `None` (Keras's float type).

    Example:

    >>> loss = PairwiseLikelihoodLoss(quantization_weight=0.0)
    >>> latent = np.array([[1.0, 1.0], [1.0, 0.0]], dtype="float32")
    >>> round(float(loss(np.array([0, 0]), latent)), 4)  # theta = 0: log 2
    0.6931
    """

    def __init__(self, quantization_weight=vocabulary.QUANTIZATION_WEIGHT, name="dhn_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not quantization_weight >= 0:
            raise ValueError(
                f"`quantization_weight` must be 0 or more. Received: quantization_weight={quantization_weight}"
            )
        self.quantization_weight = float(quantization_weight)

    def call(self, y_true, y_pred):
        codes = relaxed_codes(y_pred)
        similar = shares_a_label(y_true)
        theta = 0.5 * ops.matmul(codes, ops.transpose(codes))
        pair_loss = ops.where(_not_self(codes), ops.softplus(theta) - similar * theta, 0.0)
        other_images = ops.maximum(ops.cast(ops.shape(codes)[0], codes.dtype) - 1.0, 1.0)
        likelihood = ops.sum(pair_loss, axis=1) / other_images
        quantization = ops.mean(_log_cosh(ops.abs(codes) - 1.0), axis=1)
        return likelihood + self.quantization_weight * quantization

    def get_config(self):
        return {**super().get_config(), "quantization_weight": self.quantization_weight}


@keras.saving.register_keras_serializable(package="deephash")
class TripletRankingLoss(keras.losses.Loss):
    """DNNH's triplet ranking loss over every valid triplet of a batch.

    For relaxed codes `u = 2 * latent - 1`, a triplet `(a, p, n)` is valid when
    `a != p`, `a` and `p` share a label, and `n` shares no label with `a`; its loss is

        max(0, ||u_a - u_p||^2 - ||u_a - u_n||^2 + margin).

    The batch's loss is the mean over ALL valid triplets, those already
    satisfied (loss 0) included, as in DNNH; not over the positive ones only
    (the "batch-all" variant of Hermans et al. 2017), whose divisor shrinks as
    training succeeds. A batch without a valid triplet has loss 0. On codes in
    {-1, +1}, `||u_a - u_b||^2 = 4 * hamming(a, b)`, so a margin `m` asks for
    `m / 4` more bits of Hamming distance to the negative than to the positive.

    The batch should hold several images of each of several classes
    (`batches.ClassBalancedBatches`); the loss itself accepts any batch.
    `call` returns one value per anchor image, scaled so that their mean over
    the batch is the loss above (an anchor's share is its triplets' summed loss
    times `batch / number of valid triplets`).

    Args:
        margin: the margin, positive, in squared Euclidean units of the relaxed
            codes. Required (the method's default is `bits / 4`).
        name, reduction, dtype: as for `PairwiseLikelihoodLoss`; the name
            defaults to `"dnnh_loss"`, and the reduction is over per-anchor values.

    Example:

    >>> loss = TripletRankingLoss(margin=1.0)
    >>> latent = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype="float32")
    >>> float(loss(np.array([0, 0, 1]), latent))  # positives equal, negative at 8
    0.0
    """

    def __init__(self, margin, name="dnnh_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not margin > 0:
            raise ValueError(f"`margin` must be positive. Received: margin={margin}")
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        codes = relaxed_codes(y_pred)
        differences = codes[:, None, :] - codes[None, :, :]
        squared_distance = ops.sum(differences * differences, axis=-1)  # [anchor, other]
        similar = shares_a_label(y_true) > 0
        not_self = _not_self(codes)
        positive = ops.logical_and(similar, not_self)
        negative = ops.logical_and(ops.logical_not(similar), not_self)
        valid = ops.cast(ops.logical_and(positive[:, :, None], negative[:, None, :]), codes.dtype)
        hinge = ops.relu(squared_distance[:, :, None] - squared_distance[:, None, :] + self.margin)
        per_anchor = ops.sum(hinge * valid, axis=(1, 2))
        batch = ops.cast(ops.shape(codes)[0], codes.dtype)
        return per_anchor * batch / ops.maximum(ops.sum(valid), 1.0)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


# --- methods ------------------------------------------------------------------------


class HashingMethod:
    """What every method shares: the latent layer is the model's output, no extra metrics.

    A method overrides `loss()` and `targets(labels)`, and where it differs,
    `training_model(encoder)` (a head), `metrics()`, `summary()` (facts for
    `metrics.json`) and `batch_classes` (whether it needs P x K batches).
    """

    batch_classes = False

    def training_model(self, encoder):
        return encoder

    def metrics(self):
        return []

    def summary(self):
        return {}


class CodewordRegression(HashingMethod):
    """`dbr`: mean squared error between the latent layer and the class's codeword.

    Args:
        num_classes: number of classes.
        bits: code length.
        code_type: codeword family, one of `codewords.CODE_TYPES`. Defaults to
            `"origin"`.
    """

    name = "dbr"

    def __init__(self, num_classes, bits, code_type="origin"):
        self.code_type = code_type
        self.codewords = codewords.class_codewords(num_classes, bits, code_type)

    def loss(self):
        return keras.losses.MeanSquaredError()

    def targets(self, labels):
        """Codeword rows `[n, bits]` (float32) for integer labels `[n]`."""
        return self.codewords[single_labels(labels, len(self.codewords), self.name)].astype("float32")

    def summary(self):
        return {
            "code_type": self.code_type,
            "codeword_min_distance": codewords.min_distance(self.codewords),
        }


class HadamardRegression(CodewordRegression):
    """`hadamard`: as `dbr`, regressing onto rows of a Hadamard matrix (`codewords.hadamard_codewords`).

    Args:
        num_classes: number of classes, at most `order - 1` for the Hadamard
            matrix of order `bits` rounded up to a power of 2.
        bits: code length.
    """

    name = "hadamard"

    def __init__(self, num_classes, bits):
        self.codewords = codewords.hadamard_codewords(num_classes, bits)

    def summary(self):
        return {"codeword_min_distance": codewords.min_distance(self.codewords)}


class ClassifierHead(HashingMethod):
    """`dlbhc`: a softmax classifier on the latent layer, trained with cross-entropy.

    Args:
        num_classes: number of classes.
        bits: code length (unused: the latent layer already has it).
        label_smoothing: share of each target's probability spread evenly over
            all classes, in [0, 1). Defaults to 0.
    """

    name = "dlbhc"

    def __init__(self, num_classes, bits, label_smoothing=0.0):
        del bits
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)

    def training_model(self, encoder):
        probabilities = keras.layers.Dense(
            self.num_classes, activation="softmax", dtype="float32", name=CLASSIFIER_LAYER
        )(encoder.output)
        return keras.Model(encoder.inputs, probabilities, name="dlbhc")

    def loss(self):
        # One-hot targets: Keras's sparse cross-entropy has no label smoothing.
        return keras.losses.CategoricalCrossentropy(label_smoothing=self.label_smoothing)

    def metrics(self):
        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    def targets(self, labels):
        """One-hot rows `[n, num_classes]` (float32) for integer labels `[n]`."""
        labels = single_labels(labels, self.num_classes, self.name)
        return np.eye(self.num_classes, dtype="float32")[labels]

    def summary(self):
        return {"label_smoothing": self.label_smoothing}


class SimilarityMethod(HashingMethod):
    """A method whose loss compares the images of a batch by whether they share a label.

    Its targets are `similarity_labels`: integer or multi-hot labels as multi-hot rows.
    """

    def targets(self, labels):
        return similarity_labels(labels, self.num_classes)


class PairwiseLikelihood(SimilarityMethod):
    """`dhn`: the latent layer trained with `PairwiseLikelihoodLoss` on ordinary shuffled batches.

    Args:
        num_classes: number of classes.
        bits: code length (unused by the loss).
        quantization_weight: DHN's lambda. Defaults to 1.0.
    """

    name = "dhn"

    def __init__(self, num_classes, bits, quantization_weight=vocabulary.QUANTIZATION_WEIGHT):
        del bits
        self.num_classes = num_classes
        self.quantization_weight = float(quantization_weight)
        self.loss()  # checks the weight now, not at compile time

    def loss(self):
        return PairwiseLikelihoodLoss(self.quantization_weight)

    def summary(self):
        return {"lambda": self.quantization_weight}


class TripletRanking(SimilarityMethod):
    """`dnnh`: the latent layer trained with `TripletRankingLoss` on batches of P classes x K images.

    `batch_classes = True` asks the training loop for class-balanced batches
    (`batches.ClassBalancedBatches`).

    Args:
        num_classes: number of classes.
        bits: code length; sets the default margin.
        margin: the triplet margin. Defaults to `bits / 4`.
    """

    name = "dnnh"
    batch_classes = True

    def __init__(self, num_classes, bits, margin=None):
        self.num_classes = num_classes
        self.margin = float(bits * vocabulary.MARGIN_PER_BIT if margin is None else margin)
        self.loss()  # checks the margin now, not at compile time

    def loss(self):
        return TripletRankingLoss(self.margin)

    def summary(self):
        return {"margin": self.margin}


METHODS = {
    "dbr": CodewordRegression,
    "dlbhc": ClassifierHead,
    "dhn": PairwiseLikelihood,
    "dnnh": TripletRanking,
    "hadamard": HadamardRegression,
}
# `make_method`'s name of each method-specific option in `vocabulary.METHOD_OPTIONS`.
OPTION_NAMES = {"code_type": "code_type", "quantization_weight": "lambda", "margin": "margin", "label_smoothing": "label_smoothing"}


def make_method(name, num_classes, bits, code_type=None, *, quantization_weight=None, margin=None, label_smoothing=None):
    """Instantiates the method registered as `name`.

    Args:
        name: a key of `METHODS`.
        num_classes: number of classes in the training data.
        bits: code length.
        code_type: codeword family for `dbr`. Defaults to `None` (`"origin"`).
        quantization_weight: lambda of `dhn`. Defaults to `None` (1.0).
        margin: triplet margin of `dnnh`. Defaults to `None` (`bits / 4`).
        label_smoothing: label smoothing of `dlbhc`'s cross-entropy. Defaults
            to `None` (0).
        Each option must stay `None` for the other methods.

    Returns:
        A method object with `name`, `batch_classes` (whether it needs batches of
        P classes x K images), `training_model(encoder)`, `loss()`, `metrics()`,
        `targets(labels)` and `summary()` (its entries for `metrics.json`).

    Example:

    >>> method = make_method("dnnh", num_classes=10, bits=48)
    >>> method.summary(), method.batch_classes
    ({'margin': 12.0}, True)
    """
    if name not in METHODS:
        raise ValueError(f"`method` must be one of {tuple(METHODS)}. Received: method={name!r}")
    options = {"code_type": code_type, "quantization_weight": quantization_weight, "margin": margin, "label_smoothing": label_smoothing}
    given = {option: value for option, value in options.items() if value is not None}
    for option in given:
        owners = vocabulary.METHOD_OPTIONS[OPTION_NAMES[option]]
        if name not in owners:
            raise ValueError(f"`{option}` applies to method {' or '.join(map(repr, owners))} only. Received: method={name!r}")
    return METHODS[name](num_classes, bits, **given)
