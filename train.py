"""Training: optimisers, precision, and the resumable `fit`.

One path trains every method: `fit_resumable` runs `model.fit` with Keras's
`BackupAndRestore` callback, which saves the weights and the epoch number into
the run folder after every epoch, so a killed run continues from its last
finished epoch when started again with the same backup folder.

Backend-specific precision sits behind one small seam, `use_mixed_precision_on_gpu`;
where training runs (devices, data-parallel distribution, processes) is devices.py's.
"""

import json
from pathlib import Path

import keras
from keras import ops

import models

# The optimisers the original tool offered, by name and by its numeric code.
# Learning rates follow the original (Keras 2 defaults), not Keras 3's.
OPTIMIZERS = {
    "adadelta": (keras.optimizers.Adadelta, {"learning_rate": 1.0}),
    "sgd": (keras.optimizers.SGD, {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}),
    "adam": (keras.optimizers.Adam, {"learning_rate": 0.001}),
}
SCHEDULES = ("constant", "cosine")
# Share of all steps spent warming the rate up from zero under the cosine schedule.
WARMUP_FRACTION = 0.05
BACKUP_METADATA = "training_metadata.json"
# Learning rate of a pretrained backbone relative to the hash head (DLBHC trained its new layers 10x faster).
BACKBONE_LR_SCALE = 0.1


def make_optimizer(name, learning_rate=None, schedule="constant", total_steps=None, backbone_lr_scale=None, weight_decay=None):
    """Builds an optimiser by name with the original tool's settings.

    Args:
        name: `"adadelta"`, `"sgd"` or `"adam"`.
        learning_rate: overrides the optimiser's default (peak) rate. Defaults to `None`.
        schedule: `"constant"`, or `"cosine"`: a linear warm-up over the first
            `WARMUP_FRACTION` of the steps, then cosine decay to zero at
            `total_steps`. Defaults to `"constant"`.
        total_steps: number of training steps; needed by `"cosine"`. Defaults to `None`.
        backbone_lr_scale: a factor on the learning rate of the variables of a
            `keras.applications` backbone (`models.in_backbone`); the optimiser
            is then the `BackboneRateMixin` variant of `name`. Defaults to
            `None`: one rate for every variable.
        weight_decay: decoupled weight decay (Keras's: each step shrinks every
            variable by `learning_rate * weight_decay` of itself), 0 or more.
            Defaults to `None` (none).

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {tuple(OPTIMIZERS)}. Received: optimizer={name!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}. Received: schedule={schedule!r}")
    optimizer_class, defaults = OPTIMIZERS[name]
    settings = dict(defaults)
    if learning_rate is not None:
        settings["learning_rate"] = learning_rate
    if weight_decay:
        settings["weight_decay"] = weight_decay
    if schedule == "cosine":
        settings["learning_rate"] = _warmup_cosine(settings["learning_rate"], total_steps)
    if backbone_lr_scale is not None:
        optimizer_class = BACKBONE_RATE_OPTIMIZERS[name]
        settings["backbone_lr_scale"] = backbone_lr_scale
    return optimizer_class(**settings)


def _warmup_cosine(peak_rate, total_steps):
    if not total_steps or total_steps < 1:
        raise ValueError(f"The cosine schedule needs `total_steps` >= 1. Received: total_steps={total_steps}")
    warmup_steps = int(total_steps * WARMUP_FRACTION)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak_rate,
        warmup_steps=warmup_steps,
    )


class BackboneRateMixin:
    """Scales the learning rate of a backbone's variables, as DLBHC fine-tuned slower than its new layers.

    Keras 3 has no per-layer learning rates, and scaling the gradients instead
    does nothing under Adam or Adadelta, whose steps do not depend on the
    gradient's scale. Every Keras 3 optimiser updates each variable through
    `update_step(gradient, variable, learning_rate)` (called from
    `BaseOptimizer._backend_update_step` on JAX, from its TensorFlow override
    on TensorFlow); this mixin multiplies `learning_rate` there by
    `backbone_lr_scale` for the variables whose path lies under the backbone
    (`models.in_backbone`), so a backbone variable takes exactly the step the
    optimiser would take at the scaled rate, and the rest take the full rate.
    Weight decay (`--weight-decay`) is not scaled: a backbone decays at the
    full rate's decay while it learns at the scaled rate. Mixed into the optimisers of
    `OPTIMIZERS` as `BACKBONE_RATE_OPTIMIZERS`, registered so that a
    `model.keras` compiled with one loads again once this module is imported.

    Args:
        backbone_lr_scale: factor on the backbone's learning rate, positive.
            Defaults to `BACKBONE_LR_SCALE`.
        **kwargs: the optimiser's own arguments.

    Example:

    >>> optimizer = BackboneRateAdam(learning_rate=1e-3, backbone_lr_scale=0.1)
    """

    def __init__(self, *args, backbone_lr_scale=BACKBONE_LR_SCALE, **kwargs):
        if not backbone_lr_scale > 0:
            raise ValueError(f"`backbone_lr_scale` must be positive. Received: backbone_lr_scale={backbone_lr_scale}")
        if keras.backend.backend() == "torch":  # its fused updates bypass update_step
            raise NotImplementedError("A backbone learning-rate scale needs the TensorFlow or JAX backend.")
        super().__init__(*args, **kwargs)
        self.backbone_lr_scale = float(backbone_lr_scale)

    def update_step(self, gradient, variable, learning_rate):
        # On TensorFlow `variable` is the backend's own variable, which has no
        # Keras path: look the Keras variable up by index, as Adam does for its moments.
        keras_variable = self._trainable_variables[self._get_variable_index(variable)]
        if models.in_backbone(keras_variable.path):
            learning_rate = ops.multiply(learning_rate, self.backbone_lr_scale)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "backbone_lr_scale": self.backbone_lr_scale}


@keras.saving.register_keras_serializable(package="deephash")
class BackboneRateAdam(BackboneRateMixin, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with `backbone_lr_scale` times its rate on the backbone."""


@keras.saving.register_keras_serializable(package="deephash")
class BackboneRateSGD(BackboneRateMixin, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with `backbone_lr_scale` times its rate on the backbone."""


@keras.saving.register_keras_serializable(package="deephash")
class BackboneRateAdadelta(BackboneRateMixin, keras.optimizers.Adadelta):
    """`keras.optimizers.Adadelta` with `backbone_lr_scale` times its rate on the backbone."""


BACKBONE_RATE_OPTIMIZERS = {"adadelta": BackboneRateAdadelta, "sgd": BackboneRateSGD, "adam": BackboneRateAdam}


def gpu_count():
    """Number of GPUs the active Keras backend can use."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(device.platform == "gpu" for device in jax.devices())
    return 0


def device_description():
    """A short human description of where training runs, for the run's provenance."""
    gpus = gpu_count()
    return f"{gpus} GPU(s), {keras.backend.backend()} backend" if gpus else f"CPU, {keras.backend.backend()} backend"


def use_mixed_precision_on_gpu():
    """Switches Keras to mixed precision when a GPU is present; returns the policy name in force."""
    if gpu_count():
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return keras.mixed_precision.global_policy().name


def resumed_epoch(backup_dir):
    """The epoch a resumed `fit` will start from: the last one `BackupAndRestore` saved, else 0."""
    metadata = Path(backup_dir) / BACKUP_METADATA
    if not metadata.is_file():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


def fit_resumable(model, x, y=None, *, epochs, batch_size=None, backup_dir, verbose=1, callbacks=()):
    """Runs `model.fit`, saving state every epoch and resuming from `backup_dir` if it holds any.

    The backup is kept after training (`delete_checkpoint=False`): the caller
    removes it once the trained model itself is safely on disk, so no moment
    exists at which a kill loses the finished training.

    Args:
        model: a compiled `keras.Model`.
        x: training inputs, shuffled into batches of `batch_size`; or a
            `keras.utils.PyDataset` that yields its own `(inputs, targets)`
            batches in its own order (e.g. `batches.ClassBalancedBatches` for
            methods with `batch_classes`), with `y` and `batch_size` left `None`;
            if it has `epoch_callback()`, that callback is added (so it knows
            which epoch, resumed ones included, it serves).
        y: training targets. Defaults to `None` (for a `PyDataset`).
        epochs: total number of epochs, counting those already done.
        batch_size: examples per step. Defaults to `None` (for a `PyDataset`).
        backup_dir: folder for `BackupAndRestore`'s state.
        verbose: 0 silent, 1 a progress bar per epoch. Defaults to 1.
        callbacks: further Keras callbacks, run after the backup. Defaults to `()`.

    Returns:
        The `History` of this call (epochs run now only).
    """
    backup = keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False)
    own_batches = isinstance(x, keras.utils.PyDataset)
    if own_batches and (y is not None or batch_size is not None):
        raise ValueError(
            "With a `PyDataset` as `x`, `y` and `batch_size` must be `None`: it yields its own batches. "
            f"Received: y={'None' if y is None else 'an array'}, batch_size={batch_size}"
        )
    own_callbacks = [x.epoch_callback()] if hasattr(x, "epoch_callback") else []
    return model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=not own_batches,  # a PyDataset's batch order is its own (seeded) choice
        verbose=verbose,
        callbacks=[backup, *own_callbacks, *callbacks],
    )
