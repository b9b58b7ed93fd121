"""Training: optimisers, precision, and the resumable `fit`.

One path trains every method: `fit_resumable` runs `model.fit` with an
`EpochCheckpoint`, which saves the weights and the optimiser's state after every
epoch into the backup folder, each checkpoint written whole under a temporary
name and renamed into place. A run started again with the same backup folder
loads the newest complete checkpoint and continues from the epoch after it, so
a kill, a Ctrl-C or a full disk loses at most the epoch under way, and a
half-written checkpoint is never loaded. Each checkpoint also records the
training seconds spent up to its epoch, so a resumed run's training time counts
the earlier runs' finished epochs too.

Backend-specific precision sits behind one small seam, `use_precision`;
where training runs (devices, data-parallel distribution, processes) is devices.py's.
"""

import re
import time
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import ops

import backbones
import batches
import models
import rundir
import vocabulary

# The optimisers the original tool offered, by name and by its numeric code.
# Learning rates follow the original (Keras 2 defaults), not Keras 3's.
OPTIMIZERS = {
    "adadelta": (keras.optimizers.Adadelta, {"learning_rate": 1.0}),
    "sgd": (keras.optimizers.SGD, {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}),
    "adam": (keras.optimizers.Adam, {"learning_rate": 0.001}),
}
# airbench94_muon's optimiser (`Muon` below): Nesterov SGD at momentum 0.85 for everything but
# the convolution filters, which take orthogonalised Nesterov steps at momentum 0.6.
MUON = "muon"
MUON_SGD_MOMENTUM = 0.85
MUON_FILTER_MOMENTUM = 0.6
# Newton-Schulz iterations that orthogonalise a filter bank's update, and the quintic's
# coefficients (Jordan et al. 2024: the steepest slope at zero that still converges).
NEWTON_SCHULZ_STEPS = 3
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
SCHEDULES = vocabulary.SCHEDULES
# Share of all steps spent warming the rate up from zero under the cosine schedule.
WARMUP_FRACTION = 0.05
# The speed-runs' triangle: from TRIANGLE_START x the peak up to the peak over the first
# TRIANGLE_PEAK_FRACTION of the steps, then straight down to zero at the last step.
TRIANGLE_START = 0.2
TRIANGLE_PEAK_FRACTION = 0.23
# Weight averaging (--weight-averaging), the speed-runs' lookahead: from epoch
# LOOKAHEAD_START_EPOCH (counting from 0) on, every LOOKAHEAD_EVERY steps the weights are
# folded into a running average and training goes on from that average; its decay grows
# with the share of training done, LOOKAHEAD_DECAY ** LOOKAHEAD_EVERY * done ** LOOKAHEAD_POWER,
# so early steps move fast and the last ones are averaged strongly (airbench's values).
LOOKAHEAD_START_EPOCH = 3
LOOKAHEAD_EVERY = 5
LOOKAHEAD_DECAY = 0.95
LOOKAHEAD_POWER = 3
# A checkpoint per finished epoch in the backup folder (only the newest is kept); its name
# carries the epoch, so weights and epoch count are always one file, written atomically.
CHECKPOINT_NAME = "epoch-{epoch:04d}.weights.h5"
CHECKPOINT_PATTERN = re.compile(r"epoch-(\d+)\.weights\.h5")
# The checkpoint file's attribute holding the training seconds spent up to its epoch.
CHECKPOINT_SECONDS_ATTRIBUTE = "train_seconds"
# Room asked for before a checkpoint is written (`rundir.no_space`): its raw bytes times this,
# plus this much for HDF5's own structures.
CHECKPOINT_OVERHEAD = 1.1
CHECKPOINT_METADATA_BYTES = 2**20


def make_optimizer(name, learning_rate=None, schedule="constant", total_steps=None, backbone_lr_scale=None, weight_decay=None,
                   norm_bias_lr_scale=None, filter_lr=None, whitening_bias_steps=None):
    """Builds an optimiser by name with the original tool's settings.

    Args:
        name: `"adadelta"`, `"sgd"`, `"adam"`, or `"muon"` (`Muon`: airbench's
            orthogonalised steps on convolution filters, Nesterov SGD on the rest).
        learning_rate: overrides the optimiser's default (peak) rate. Defaults to `None`.
        schedule: `"constant"`, or `"cosine"`: a linear warm-up over the first
            `WARMUP_FRACTION` of the steps, then cosine decay to zero at
            `total_steps`; or `"triangular"` (see `Triangular`). Defaults to `"constant"`.
        total_steps: number of training steps; needed by `"cosine"`. Defaults to `None`.
        backbone_lr_scale: a factor on the learning rate of the variables of a
            `keras.applications` backbone (`backbones.in_backbone`); the optimiser
            is then the `BackboneRateMixin` variant of `name`. Defaults to
            `None`: one rate for every variable.
        weight_decay: decoupled weight decay (Keras's: each step shrinks every
            variable by `learning_rate * weight_decay` of itself), 0 or more.
            Defaults to `None` (none).
        norm_bias_lr_scale: a factor on the learning rate of batch norm biases
            (`models.is_norm_bias`), as the speed-runs train them faster; the
            optimiser is then a `RateScaleMixin` variant. Defaults to `None` (1).
        filter_lr: `"muon"` only: the (peak) rate of the convolution filters' steps,
            which follow the schedule's shape. Defaults to `None` (`learning_rate`).
        whitening_bias_steps: `"muon"` only: the whitening layer's bias trains
            for these first steps only, its rate (`learning_rate` x
            `norm_bias_lr_scale`) falling straight to zero over them, as
            airbench's does. Defaults to `None`: it trains like the other biases.

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    if name not in (*OPTIMIZERS, MUON):
        raise ValueError(f"`optimizer` must be one of {(*OPTIMIZERS, MUON)}. Received: optimizer={name!r}")
    if name == MUON:
        return _muon(learning_rate, schedule, total_steps, weight_decay, norm_bias_lr_scale, filter_lr, whitening_bias_steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}. Received: schedule={schedule!r}")
    optimizer_class, defaults = OPTIMIZERS[name]
    settings = dict(defaults)
    if learning_rate is not None:
        settings["learning_rate"] = learning_rate
    if weight_decay:
        settings["weight_decay"] = weight_decay
    settings["learning_rate"] = _scheduled(settings["learning_rate"], schedule, total_steps)
    if backbone_lr_scale is not None or norm_bias_lr_scale is not None:
        optimizer_class = RATE_SCALE_OPTIMIZERS[name]
        settings.update(backbone_lr_scale=1.0 if backbone_lr_scale is None else backbone_lr_scale,
                        norm_bias_lr_scale=1.0 if norm_bias_lr_scale is None else norm_bias_lr_scale)
    return optimizer_class(**settings)


def _scheduled(peak_rate, schedule, total_steps):
    """The learning rate `schedule` makes of `peak_rate` over `total_steps` (a float for "constant")."""
    if schedule == "cosine":
        return _warmup_cosine(peak_rate, total_steps)
    if schedule == "triangular":
        return Triangular(peak_rate, _checked_steps(total_steps, schedule))
    if schedule == "linear":
        return Linear(peak_rate, _checked_steps(total_steps, schedule))
    return peak_rate


def _muon(learning_rate, schedule, total_steps, weight_decay, norm_bias_lr_scale, filter_lr, whitening_bias_steps):
    """The `Muon` optimiser of `make_optimizer`: its filters' rate follows the schedule's shape."""
    if learning_rate is None or not learning_rate > 0:
        raise ValueError(f"The muon optimiser needs a positive `learning_rate`. Received: learning_rate={learning_rate}")
    filter_lr = learning_rate if filter_lr is None else filter_lr
    bias_rate = learning_rate * (1.0 if norm_bias_lr_scale is None else norm_bias_lr_scale)
    return Muon(
        learning_rate=_scheduled(learning_rate, schedule, total_steps),
        weight_decay=weight_decay or None,
        norm_bias_lr_scale=1.0 if norm_bias_lr_scale is None else norm_bias_lr_scale,
        filter_rate_scale=filter_lr / learning_rate,
        whitening_bias_steps=whitening_bias_steps,
        whitening_bias_rate=bias_rate,
    )


def _checked_steps(total_steps, schedule):
    if not total_steps or total_steps < 1:
        raise ValueError(f"The {schedule} schedule needs `total_steps` >= 1. Received: total_steps={total_steps}")
    return int(total_steps)


@keras.saving.register_keras_serializable(package="deephash")
class Triangular(keras.optimizers.schedules.LearningRateSchedule):
    """The speed-runs' learning rate: a straight rise to `peak_rate`, then a straight fall to zero.

    Starts at `TRIANGLE_START * peak_rate`, peaks after `TRIANGLE_PEAK_FRACTION`
    of `total_steps`, and reaches zero at `total_steps`.

    Example:

    >>> schedule = Triangular(1.0, total_steps=100)
    >>> [round(float(schedule(step)), 3) for step in (0, 23, 100)]
    [0.2, 1.0, 0.0]
    """

    def __init__(self, peak_rate, total_steps):
        self.peak_rate = float(peak_rate)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak_step = max(1.0, TRIANGLE_PEAK_FRACTION * self.total_steps)
        rising = TRIANGLE_START + (1.0 - TRIANGLE_START) * step / peak_step
        falling = (self.total_steps - step) / max(1.0, self.total_steps - peak_step)
        return self.peak_rate * ops.clip(ops.where(step < peak_step, rising, falling), 0.0, 1.0)

    def get_config(self):
        return {"peak_rate": self.peak_rate, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="deephash")
class Linear(keras.optimizers.schedules.LearningRateSchedule):
    """airbench94_muon's learning rate: `peak_rate` at the first step, falling straight to zero at `total_steps`.

    Example:

    >>> schedule = Linear(1.0, total_steps=100)
    >>> [round(float(schedule(step)), 3) for step in (0, 25, 100, 120)]
    [1.0, 0.75, 0.0, 0.0]
    """

    def __init__(self, peak_rate, total_steps):
        self.peak_rate = float(peak_rate)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return self.peak_rate * ops.clip(1.0 - step / self.total_steps, 0.0, 1.0)

    def get_config(self):
        return {"peak_rate": self.peak_rate, "total_steps": self.total_steps}


def _warmup_cosine(peak_rate, total_steps):
    total_steps = _checked_steps(total_steps, "cosine")
    warmup_steps = int(total_steps * WARMUP_FRACTION)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak_rate,
        warmup_steps=warmup_steps,
    )


class RateScaleMixin:
    """Scales the learning rate of some variables: a backbone's (DLBHC fine-tuned slower than its new
    layers) and batch norm biases' (the speed-runs train them faster).

    Keras 3 has no per-layer learning rates, and scaling the gradients instead
    does nothing under Adam or Adadelta, whose steps do not depend on the
    gradient's scale. Every Keras 3 optimiser updates each variable through
    `update_step(gradient, variable, learning_rate)` (called from
    `BaseOptimizer._backend_update_step` on JAX, from its TensorFlow override
    on TensorFlow); this mixin multiplies `learning_rate` there by
    `backbone_lr_scale` for the variables whose path lies under the backbone
    (`backbones.in_backbone`) and by `norm_bias_lr_scale` for batch norm biases
    (`models.is_norm_bias`), so such a variable takes exactly the step the
    optimiser would take at the scaled rate, and the rest take the full rate.
    Weight decay (`--weight-decay`) is not scaled: a backbone decays at the
    full rate's decay while it learns at the scaled rate. Mixed into the optimisers of
    `OPTIMIZERS` as `RATE_SCALE_OPTIMIZERS`, registered so that a
    `model.keras` compiled with one loads again once this module is imported.

    Args:
        backbone_lr_scale: factor on the backbone's learning rate, positive.
            Defaults to `vocabulary.BACKBONE_LR_SCALE`.
        norm_bias_lr_scale: factor on the batch norm biases' learning rate,
            positive. Defaults to 1.
        **kwargs: the optimiser's own arguments.

    Example:

    >>> optimizer = RateScaleAdam(learning_rate=1e-3, backbone_lr_scale=0.1)
    """

    def __init__(self, *args, backbone_lr_scale=vocabulary.BACKBONE_LR_SCALE, norm_bias_lr_scale=1.0, **kwargs):
        for name, value in (("backbone_lr_scale", backbone_lr_scale), ("norm_bias_lr_scale", norm_bias_lr_scale)):
            if not value > 0:
                raise ValueError(f"`{name}` must be positive. Received: {name}={value}")
        if keras.backend.backend() == "torch":  # its fused updates bypass update_step
            raise NotImplementedError("A per-variable learning-rate scale needs the TensorFlow or JAX backend.")
        super().__init__(*args, **kwargs)
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.norm_bias_lr_scale = float(norm_bias_lr_scale)

    def update_step(self, gradient, variable, learning_rate):
        # On TensorFlow `variable` is the backend's own variable, which has no
        # Keras path: look the Keras variable up by index, as Adam does for its moments.
        path = self._trainable_variables[self._get_variable_index(variable)].path
        if backbones.in_backbone(path):
            learning_rate = ops.multiply(learning_rate, self.backbone_lr_scale)
        elif models.is_norm_bias(path):
            learning_rate = ops.multiply(learning_rate, self.norm_bias_lr_scale)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "backbone_lr_scale": self.backbone_lr_scale, "norm_bias_lr_scale": self.norm_bias_lr_scale}


@keras.saving.register_keras_serializable(package="deephash")
class RateScaleAdam(RateScaleMixin, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with scaled rates on the backbone and the batch norm biases."""


@keras.saving.register_keras_serializable(package="deephash")
class RateScaleSGD(RateScaleMixin, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with scaled rates on the backbone and the batch norm biases."""


@keras.saving.register_keras_serializable(package="deephash")
class RateScaleAdadelta(RateScaleMixin, keras.optimizers.Adadelta):
    """`keras.optimizers.Adadelta` with scaled rates on the backbone and the batch norm biases."""


RATE_SCALE_OPTIMIZERS = {"adadelta": RateScaleAdadelta, "sgd": RateScaleSGD, "adam": RateScaleAdam}


@keras.saving.register_keras_serializable(package="deephash")
class Muon(RateScaleSGD):
    """airbench94_muon's optimiser: orthogonalised steps for convolution filters, Nesterov SGD for the rest.

    Every trainable 4-D variable (a convolution's filter bank, kernel
    `[rows, columns, in, out]`) takes Muon's step (Jordan et al. 2024) as
    airbench94_muon does: its Nesterov momentum at `filter_momentum` (the
    buffer sums raw gradients, `buffer = momentum * buffer + gradient`, and the
    step direction is `gradient + momentum * buffer`); the filter bank is first
    rescaled to Frobenius norm sqrt(`out`), then moved by the rate times the
    direction orthogonalised (`orthogonalised`) as an `[rows * columns * in, out]`
    matrix. Scaling the weights back each step makes weight decay moot for them.
    Every other variable takes Keras's Nesterov SGD at momentum
    `MUON_SGD_MOMENTUM`, with `RateScaleMixin`'s faster batch norm biases.

    Args:
        filter_rate_scale: the filters' rate as a multiple of the others',
            positive (airbench: 0.24 for filters against its biases' rate).
        filter_momentum: the filters' Nesterov momentum. Defaults to `MUON_FILTER_MOMENTUM`.
        whitening_bias_steps: the whitening layer's bias (`models.is_whitening_bias`)
            trains for these first steps only, at `whitening_bias_rate` falling
            straight to zero over them. Defaults to `None`: as the other biases.
        whitening_bias_rate: that bias's first rate. Defaults to `None`.
        **kwargs: `RateScaleSGD`'s (`learning_rate`, `weight_decay`, `norm_bias_lr_scale`, ...).

    Example:

    >>> optimizer = Muon(learning_rate=1.0, filter_rate_scale=0.24)
    >>> optimizer.momentum, optimizer.nesterov
    (0.85, True)
    """

    def __init__(self, *args, filter_rate_scale=1.0, filter_momentum=MUON_FILTER_MOMENTUM, whitening_bias_steps=None,
                 whitening_bias_rate=None, momentum=MUON_SGD_MOMENTUM, nesterov=True, backbone_lr_scale=1.0, **kwargs):
        super().__init__(*args, momentum=momentum, nesterov=nesterov, backbone_lr_scale=backbone_lr_scale, **kwargs)
        if not filter_rate_scale > 0:
            raise ValueError(f"`filter_rate_scale` must be positive. Received: filter_rate_scale={filter_rate_scale}")
        if whitening_bias_steps is not None and (whitening_bias_steps < 1 or whitening_bias_rate is None):
            raise ValueError(
                f"`whitening_bias_steps` must be at least 1, with a `whitening_bias_rate`. "
                f"Received: whitening_bias_steps={whitening_bias_steps}, whitening_bias_rate={whitening_bias_rate}"
            )
        self.filter_rate_scale = float(filter_rate_scale)
        self.filter_momentum = float(filter_momentum)
        self.whitening_bias_steps = whitening_bias_steps
        self.whitening_bias_rate = whitening_bias_rate

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        if len(variable.shape) == 4:
            return self._filter_step(gradient, variable, self.momentums[index], ops.multiply(learning_rate, self.filter_rate_scale))
        if self.whitening_bias_steps and models.is_whitening_bias(self._trainable_variables[index].path):
            left = 1.0 - ops.cast(self.iterations, "float32") / self.whitening_bias_steps
            learning_rate = ops.multiply(self.whitening_bias_rate, ops.maximum(left, 0.0))
        return super().update_step(gradient, variable, learning_rate)

    def _filter_step(self, gradient, variable, buffer, learning_rate):
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.filter_momentum, variable.dtype)
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        direction = ops.add(gradient, ops.multiply(buffer, momentum))
        target_norm = float(variable.shape[-1]) ** 0.5
        rescaled = ops.multiply(variable, target_norm / (ops.norm(ops.reshape(variable, (-1,))) + 1e-12))
        step = ops.multiply(orthogonalised(direction), ops.cast(learning_rate, variable.dtype))
        self.assign(variable, ops.subtract(rescaled, step))

    def get_config(self):
        return {
            **super().get_config(), "filter_rate_scale": self.filter_rate_scale, "filter_momentum": self.filter_momentum,
            "whitening_bias_steps": self.whitening_bias_steps, "whitening_bias_rate": self.whitening_bias_rate,
        }


def orthogonalised(update, steps=NEWTON_SCHULZ_STEPS):
    """Muon's update direction: `update` (any shape, last axis the outputs) with its singular values pushed towards 1.

    The `[-1, out]` matrix of `update` goes through `steps` iterations of the
    quintic Newton-Schulz map `X <- a X + (b A + c A^2) X`, `A = X X^T`, taken
    on the orientation with fewer rows, after scaling `X` to Frobenius norm 1
    (so every singular value starts at most 1). With airbench's 3 steps the
    singular values land roughly in (0.5, 1.5), not exactly 1, which trains as
    well. Float32 throughout (airbench: bfloat16).

    >>> matrix = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    >>> singular = np.linalg.svd(keras.ops.convert_to_numpy(orthogonalised(matrix, steps=10)), compute_uv=False)
    >>> bool(np.all((singular > 0.6) & (singular < 1.3)))
    True
    """
    shape = update.shape
    matrix = ops.reshape(update, (-1, shape[-1]))
    wide = matrix.shape[0] <= matrix.shape[1]
    x = matrix if wide else ops.transpose(matrix)
    x = ops.divide(x, ops.norm(ops.reshape(x, (-1,))) + 1e-7)
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    for _ in range(steps):
        gram = ops.matmul(x, ops.transpose(x))
        x = a * x + ops.matmul(b * gram + c * ops.matmul(gram, gram), x)
    return ops.reshape(x if wide else ops.transpose(x), shape)


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


def use_precision(precision=None):
    """Sets Keras's dtype policy for the run and returns its name.

    `precision`: `"float32"`, or `"mixed_bfloat16"` (bfloat16 arithmetic, float32 weights; on a
    CPU with AVX512_BF16, oneDNN's bfloat16 kernels). `None`: mixed bfloat16 on a GPU, float32 elsewhere.
    """
    if precision is None:
        precision = "mixed_bfloat16" if gpu_count() else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return keras.mixed_precision.global_policy().name


def checkpoints(backup_dir):
    """The complete checkpoints in `backup_dir`, oldest first, as `(epoch, path)` pairs."""
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return []
    found = ((CHECKPOINT_PATTERN.fullmatch(path.name), path) for path in backup_dir.iterdir())
    return sorted((int(match.group(1)), path) for match, path in found if match)


def resumed_epoch(backup_dir):
    """The epoch a resumed `fit` starts from: that of the newest complete checkpoint, else 0."""
    found = checkpoints(backup_dir)
    return found[-1][0] if found else 0


def checkpoint_seconds(backup_dir):
    """The training seconds spent up to the newest complete checkpoint's epoch, else 0.

    A checkpoint written before this was recorded counts as 0.
    """
    found = checkpoints(backup_dir)
    if not found:
        return 0.0
    with h5py.File(found[-1][1], "r") as checkpoint:
        return float(checkpoint.attrs.get(CHECKPOINT_SECONDS_ATTRIBUTE, 0.0))


def restore_checkpoint(model, backup_dir):
    """Loads the newest complete checkpoint (weights and optimiser state) into `model`; returns its epoch, or 0."""
    found = checkpoints(backup_dir)
    if not found:
        return 0
    epoch, path = found[-1]
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
    model.load_weights(path)
    return epoch


class Lookahead(keras.callbacks.Callback):
    """Weight averaging as the speed-runs do it: training continues from a running average of the weights.

    From epoch `LOOKAHEAD_START_EPOCH` on, every `LOOKAHEAD_EVERY` steps each
    floating-point weight (batch norm statistics included) moves into its
    running average, `average += (1 - decay) * (weight - average)`, and is then
    set to that average; `decay` grows from near 0 to `LOOKAHEAD_DECAY **
    LOOKAHEAD_EVERY` as training nears `total_steps`. Each epoch ends with the
    weights set to the average, so a checkpoint taken then holds it, and a
    resumed run starts its average from those weights. `fit_resumable` runs it
    before the checkpoint (`weight_callbacks`).

    Args:
        steps_per_epoch: training steps in one epoch.
        total_steps: training steps in the whole run.

    Example:

    >>> lookahead = Lookahead(steps_per_epoch=100, total_steps=1000)
    >>> round(lookahead.decay(step=1000), 4), round(lookahead.decay(step=500), 4)
    (0.7738, 0.0967)
    """

    def __init__(self, steps_per_epoch, total_steps):
        super().__init__()
        if not (steps_per_epoch >= 1 and total_steps >= 1):
            raise ValueError(f"Lookahead needs at least one step. Received: steps_per_epoch={steps_per_epoch}, total_steps={total_steps}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.epoch = 0
        self.average = None

    def decay(self, step):
        """The share of the running average kept at `step` (counting from 1)."""
        return LOOKAHEAD_DECAY**LOOKAHEAD_EVERY * (step / self.total_steps) ** LOOKAHEAD_POWER

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * self.steps_per_epoch + batch + 1
        if self.epoch < LOOKAHEAD_START_EPOCH or step % LOOKAHEAD_EVERY:
            return
        weights = self._averaged_weights()
        if self.average is None:
            self.average = [ops.copy(weight.value) for weight in weights]
            return
        keep = self.decay(step)
        for index, weight in enumerate(weights):
            self.average[index] = self.average[index] + (1.0 - keep) * (weight.value - self.average[index])
            weight.assign(self.average[index])

    def on_epoch_end(self, epoch, logs=None):
        if self.average is not None:
            for weight, average in zip(self._averaged_weights(), self.average):
                weight.assign(average)

    def _averaged_weights(self):
        return [weight for weight in self.model.weights if "float" in str(weight.dtype)]


class TimeEstimate(keras.callbacks.Callback):
    """Prints, after the first epoch of a `fit`, about how long all its `epochs` will take.

    The first epoch holds the tracing (and compilation) of the step, so the
    estimate errs long. It is printed as the second epoch begins, after the
    progress bar has closed the first one's line.
    """

    def __init__(self, epochs):
        super().__init__()
        self.epochs = int(epochs)
        self.started, self.first_epoch_seconds, self.printed = None, None, False

    def on_epoch_begin(self, epoch, logs=None):
        if self.started is None:
            self.started = time.perf_counter()
        elif self.first_epoch_seconds is not None and not self.printed:
            self.printed = True
            seconds = self.first_epoch_seconds
            print(f"the first epoch took {seconds:.0f} s: the {self.epochs} epochs will take about {_duration(seconds * self.epochs)}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if self.first_epoch_seconds is None:
            self.first_epoch_seconds = time.perf_counter() - self.started


def _duration(seconds):
    """'45 s', '12 min', '1.5 h'.

    >>> _duration(45), _duration(720), _duration(5400)
    ('45 s', '12 min', '1.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the weights and the optimiser's state after every epoch, atomically, keeping only the newest.

    Each checkpoint is written under a temporary name and renamed (`rundir.atomic_path`), so the
    backup folder holds complete checkpoints only; the older one is removed after the newer is in
    place. A failed write (a full disk) is a `rundir.WriteError` and leaves the older one. Each
    also records, as an attribute, the training seconds spent up to its epoch (`checkpoint_seconds`).

    Args:
        backup_dir: the folder of the checkpoints, made when the first is saved.
        seconds_before: training seconds spent before this `fit` began (by the
            runs it resumes). Defaults to 0.
    """

    def __init__(self, backup_dir, seconds_before=0.0):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.seconds_before = seconds_before
        self.started = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        with rundir.atomic_path(self.backup_dir / CHECKPOINT_NAME.format(epoch=epoch + 1)) as temporary:
            rundir.no_space(checkpoint_bytes(self.model), self.backup_dir)
            self.model.save_weights(temporary)
            with h5py.File(temporary, "a") as checkpoint:
                checkpoint.attrs[CHECKPOINT_SECONDS_ATTRIBUTE] = self.seconds_before + time.perf_counter() - self.started
        for _, older in checkpoints(self.backup_dir)[:-1]:
            older.unlink(missing_ok=True)


def checkpoint_bytes(model):
    """About the size of a checkpoint of `model`: its weights and optimiser state, plus HDF5's overhead."""
    variables = [*model.weights, *(model.optimizer.variables if model.optimizer is not None else [])]
    raw = sum(int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize for variable in variables)
    return int(raw * CHECKPOINT_OVERHEAD) + CHECKPOINT_METADATA_BYTES


def fit_resumable(model, data, *, epochs, backup_dir, verbose=1, callbacks=(), weight_callbacks=()):
    """Runs `model.fit`, saving state every epoch and resuming from `backup_dir` if it holds any.

    The newest complete checkpoint in `backup_dir` is loaded first and `fit` starts at the
    epoch after it. The checkpoints are kept after training: the caller removes them once the
    trained model itself is safely on disk, so no moment exists at which a kill loses the
    finished training.

    Args:
        model: a compiled, built `keras.Model`.
        data: a `keras.utils.PyDataset` or `tf.data.Dataset` of `(inputs, targets)`
            batches in its own seeded order (`devices.Placement.training_batches`,
            `batches.ClassBalancedBatches`), so a resumed run continues the
            batch orders; if it has `epoch_callback()`, that callback is added
            (so it knows which epoch, resumed ones included, it serves), and on
            TensorFlow it is fed through `batches.tensorflow_dataset`.
        epochs: total number of epochs, counting those already done.
        backup_dir: the folder of the checkpoints (`EpochCheckpoint`).
        verbose: 0 silent, 1 a progress bar per epoch. Defaults to 1.
        callbacks: further Keras callbacks, run after the checkpoint. Defaults to `()`.
        weight_callbacks: callbacks that change the weights at an epoch's end
            (`Lookahead`), run before the checkpoint saves them. Defaults to `()`.

    Returns:
        The `History` of this call (epochs run now only).
    """
    start_epoch = restore_checkpoint(model, backup_dir)
    checkpoint = EpochCheckpoint(backup_dir, seconds_before=checkpoint_seconds(backup_dir))
    own_callbacks = []
    if hasattr(data, "epoch_callback"):
        own_callbacks.append(data.epoch_callback())
        if keras.backend.backend() == "tensorflow":  # Keras's own feed of a PyDataset stalls there
            data = batches.tensorflow_dataset(data)
    return model.fit(
        data,
        epochs=epochs,
        initial_epoch=start_epoch,
        shuffle=False,  # the batch order is the data set's own (seeded) choice
        verbose=verbose,
        callbacks=[*weight_callbacks, checkpoint, *own_callbacks, *callbacks],
    )
