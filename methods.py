"""Training methods: how the latent layer is taught to produce good codes.

A method is a small head on top of the encoder plus a loss and the targets that
loss compares against; everything else (data, optimiser, `fit`, encoding,
evaluation) is shared. `make_method(name, ...)` picks one from `METHODS`.

- `dbr` (DeepBinaryRepre, Lu et al. 2017): the latent layer regresses (mean
  squared error) onto a fixed binary codeword per class (`codewords.py`).
- `dlbhc` (Deep Learning of Binary Hash Codes, Lin et al., CVPRW 2015): the
  latent sigmoid layer feeds a softmax classifier trained with cross-entropy;
  the codes are a by-product of classification.
"""

import keras
import numpy as np

import codewords

CLASSIFIER_LAYER = "classifier"


class CodewordRegression:
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

    def training_model(self, encoder):
        return encoder

    def loss(self):
        return keras.losses.MeanSquaredError()

    def metrics(self):
        return []

    def targets(self, labels):
        """Codeword rows `[n, bits]` (float32) for integer labels `[n]`."""
        return self.codewords[labels].astype("float32")

    def summary(self):
        return {
            "code_type": self.code_type,
            "codeword_min_distance": codewords.min_distance(self.codewords),
        }


class ClassifierHead:
    """`dlbhc`: a softmax classifier on the latent layer, trained with cross-entropy.

    Args:
        num_classes: number of classes.
        bits: code length (unused: the latent layer already has it).
    """

    name = "dlbhc"

    def __init__(self, num_classes, bits):
        del bits
        self.num_classes = num_classes

    def training_model(self, encoder):
        probabilities = keras.layers.Dense(
            self.num_classes, activation="softmax", dtype="float32", name=CLASSIFIER_LAYER
        )(encoder.output)
        return keras.Model(encoder.inputs, probabilities, name="dlbhc")

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy()

    def metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def targets(self, labels):
        return np.asarray(labels, dtype="int32")

    def summary(self):
        return {}


METHODS = {"dbr": CodewordRegression, "dlbhc": ClassifierHead}


def make_method(name, num_classes, bits, code_type=None):
    """Instantiates the method registered as `name`.

    Args:
        name: a key of `METHODS`.
        num_classes: number of classes in the training data.
        bits: code length.
        code_type: codeword family for `dbr`; must be `None` for other methods.
            Defaults to `None` (the method's own default).

    Returns:
        A method object with `training_model(encoder)`, `loss()`, `metrics()`,
        `targets(labels)` and `summary()`.
    """
    if name not in METHODS:
        raise ValueError(f"`method` must be one of {tuple(METHODS)}. Received: method={name!r}")
    if code_type is None:
        return METHODS[name](num_classes, bits)
    if name != "dbr":
        raise ValueError(f"`code_type` applies to method 'dbr' only. Received: method={name!r}")
    return METHODS[name](num_classes, bits, code_type=code_type)
