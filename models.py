"""Hashing networks: an image encoder whose last layer is `bits` sigmoid units.

Every architecture takes raw pixels (0..255, any height, width and channel
count), scales them to [0, 1] inside the model, and ends in the layer named
`LATENT_LAYER`: `Dense(bits, activation="sigmoid")`. A code bit is 1 where the
latent activation is above `BIT_THRESHOLD`.

- `dbr`: the DeepBinaryRepre CNN (Lu et al. 2017), layer for layer.
- `resnet`: a small residual CNN (batch norm, three stages), stronger and slower.

Example:

>>> encoder = build_encoder("dbr", input_shape=(28, 28, 1), bits=48)
>>> encoder.output.shape
(None, 48)
"""

import keras
from keras import layers

ARCHS = ("dbr", "resnet")
LATENT_LAYER = "latent"
BIT_THRESHOLD = 0.5
EXTRA_LAYER_UNITS = 512
RESNET_WIDTHS = (32, 64, 128)
# PyTorch's default. Keras's 0.99 averages over ~100 steps of fast-changing
# weights, which left a 5-epoch classroom run predicting one class at inference.
BATCH_NORM_MOMENTUM = 0.9


def build_encoder(arch, input_shape, bits, extra_layer=False):
    """Builds the encoder `pixels -> latent` for one architecture.

    Args:
        arch: one of `ARCHS`.
        input_shape: `(height, width, channels)` of the images.
        bits: number of latent sigmoid units, i.e. the code length.
        extra_layer: whether to add the original tool's "additional activation
            layer", a `Dense(512)` + ReLU block, just before the latent layer.
            Defaults to `False`.

    Returns:
        A `keras.Model` mapping `[batch, *input_shape]` pixels in 0..255 to
        `[batch, bits]` latent activations in (0, 1).
    """
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {ARCHS}. Received: arch={arch!r}")
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="scale_to_unit")(inputs)
    x = _dbr_trunk(x) if arch == "dbr" else _resnet_trunk(x, flip=input_shape[-1] == 3)
    if extra_layer:
        x = layers.Dense(EXTRA_LAYER_UNITS, activation="relu", name="extra_dense")(x)
    # float32 so the codes stay exact under mixed precision.
    latent = layers.Dense(bits, activation="sigmoid", dtype="float32", name=LATENT_LAYER)(x)
    return keras.Model(inputs, latent, name=f"{arch}_encoder")


def encoder_of(model):
    """The sub-model of a training model that maps pixels to the latent layer."""
    return keras.Model(model.inputs, model.get_layer(LATENT_LAYER).output, name="encoder")


def _dbr_trunk(x):
    """DeepBinaryRepre's CNN up to (not including) its latent layer."""
    for filters, stage in ((32, 1), (64, 2)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{stage}a")(x)
        x = layers.Conv2D(filters, 3, padding="valid", activation="relu", name=f"conv{stage}b")(x)
        x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        x = layers.Dropout(0.25, name=f"dropout{stage}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", name="dense")(x)
    return layers.Dropout(0.5, name="dropout_dense")(x)


def _resnet_trunk(x, flip):
    """A small residual CNN: per stage a conv, a 2x2 pool and one residual block of two convs.

    Random horizontal flips (training only) are built in for colour images, where
    mirror images belong to the same class; digits are not flipped.
    """
    if flip:
        x = layers.RandomFlip("horizontal", name="random_flip")(x)
    x = _conv_bn_relu(x, RESNET_WIDTHS[0], "stem")
    for stage, filters in enumerate(RESNET_WIDTHS, start=1):
        x = _conv_bn_relu(x, filters, f"stage{stage}_conv")
        x = layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
        shortcut = x
        x = _conv_bn_relu(x, filters, f"stage{stage}_res1")
        x = _conv_bn_relu(x, filters, f"stage{stage}_res2")
        x = layers.Add(name=f"stage{stage}_add")([shortcut, x])
    return layers.GlobalAveragePooling2D(name="global_pool")(x)


def _conv_bn_relu(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)
