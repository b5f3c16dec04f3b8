"""The Trainer: builds the training state once, runs the steps, and leaves every side concern
(checkpoints, logs, MLflow, signals, the final artifact) to hooks.

Per step, one ``tf.function``: forward + loss + gradients (an inner function, compiled with
``xla``), then (with several ranks) one grouped allreduce of the gradients, then the optimizer
step (SGD momentum, warm-up + cosine, per-tensor then global-norm clipping as automl does,
dynamic loss scaling under float16) and the EMA update. One call per step: handing D0's 455
gradients from one function to the next cost ~30 ms of Python per step. Rank 0's initial (or
restored) state is broadcast before the first step.

Hook events, in the order a run meets them (see `hooks.base.Hook`): ``on_setup`` (before the
model is built), ``on_restore`` (state built, before ranks share it), ``on_train_begin``,
``on_step_end`` after every step (with rank-averaged logs every ``log_every`` steps),
``on_checkpoint`` after each save, ``on_train_end``, and ``on_exit`` always, with the error if
any. Hooks are called in list order, except ``on_train_end`` and ``on_exit`` which run in
reverse order: a hook listed earlier wraps the ones after it (its end sees their results).
"""

from __future__ import annotations

import hashlib
import logging
import math

from efficientdet.training.config import TrainConfig

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def precision_policy(amp: bool) -> str:
    """float32, or mixed_float16 on GPU / mixed_bfloat16 on CPU when AMP is on."""
    import tensorflow as tf

    if not amp:
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def use_deterministic_mode() -> None:
    """Runs of the same seed repeat bit for bit (``data.deterministic``; the input pipeline
    fixes its order and augmentation seeds itself). Two settings: TensorFlow's deterministic
    kernels, and no grappler memory optimizer. That optimizer rewrites a large AddN (the
    gradient of a weight that the five levels of the box and class heads share) into
    additions to a temporary variable in whatever order the inputs arrive; once the
    executor's cost estimates settle, about 90 steps into a run, the order, and so the last
    bits of those gradients, change from run to run (docs/performance.md). oneDNN's kernels
    and ops side by side stay on: with the rewrite gone they repeat too. `loop.train` calls
    this; code that builds a `Trainer` itself calls it first."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    _memory_optimizer_off()


def _memory_optimizer_off() -> None:
    """Turns grappler's memory optimizer off for the functions this thread calls after this
    (and any thread that starts calling functions later). The option is not among
    `tf.config.optimizer`'s switches, so it goes into the eager context's base ConfigProto
    (a private attribute, checked below), from which TensorFlow builds the options each
    function call carries."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    config = config_pb2.ConfigProto()
    if ctx._config is not None:
        config.CopyFrom(ctx._config)
    config.graph_options.rewrite_options.memory_optimization = (
        rewriter_config_pb2.RewriterConfig.NO_MEM_OPT)
    ctx._config = config
    ctx.set_optimizer_experimental_options({})  # drops this thread's cached call options
    carried = config_pb2.ConfigProto.FromString(
        ctx.function_call_options.config_proto_serialized)
    if (carried.graph_options.rewrite_options.memory_optimization
            != rewriter_config_pb2.RewriterConfig.NO_MEM_OPT):  # a TensorFlow that differs
        log.warning("data.deterministic: could not turn grappler's memory optimizer off; runs "
                    "may part after ~90 steps (docs/performance.md)")


def frozen_bn_step(total_steps: int, fraction: float) -> int | None:
    """The step from which BN trains on its moving statistics: the last FRACTION of
    TOTAL_STEPS, at least one step when FRACTION > 0; None when off, or when that would be
    the whole run."""
    if fraction <= 0:
        return None
    start = total_steps - max(1, round(fraction * total_steps))
    return start if start > 0 else None  # from step 0 BN would never leave its initial values


def weights_digest(variables) -> str:
    """sha256 over the bytes of the variables, in order (to compare ranks and runs)."""
    import numpy as np

    h = hashlib.sha256()
    for v in variables:
        h.update(np.asarray(v.numpy() if hasattr(v, "numpy") else v).tobytes())
    return h.hexdigest()


def schedule_lengths(config: TrainConfig, world_size: int, num_examples: int) -> dict:
    """steps_per_epoch, total_steps, warmup_steps, global batch and the scaled peak lr, for
    NUM_EXAMPLES training examples."""
    from efficientdet.training.schedules import scaled_lr

    global_batch = config.data.batch_size * world_size
    steps_per_epoch = max(1, num_examples // global_batch)
    total = config.train.steps or max(1, math.ceil(config.train.epochs * steps_per_epoch))
    opt = config.optimizer
    warmup = opt.warmup_steps
    if warmup is None:
        warmup = round(opt.warmup_epochs * steps_per_epoch)
    warmup = max(0, min(warmup, total - 1))
    return {"num_examples": num_examples, "steps_per_epoch": steps_per_epoch,
            "total_steps": total, "warmup_steps": warmup, "global_batch": global_batch,
            "peak_lr": scaled_lr(opt.lr, global_batch, opt.reference_batch)}


def count_examples(config: TrainConfig) -> int:
    """The training set's size: the config's ``data.num_examples``, else the dataset's
    completion report (no shard is read)."""
    if config.data.num_examples is not None:
        return config.data.num_examples
    from efficientdet.data.dataset import ConvertedDataset

    with ConvertedDataset.open(config.data.train, config.data.cache_dir) as data:
        return data.num_examples


class Trainer:
    """One training run of CONFIG on the ranks of CTX (`training.distributed.Context`), with
    HOOKS. Public attributes are what hooks read: ``config`` (resolved: num_classes and
    image_size filled), ``ctx``, ``model``, ``ema``, ``optimizer``, ``store``, ``lengths``,
    ``policy``, ``step``, ``start_step``, ``metrics`` (last averaged losses), ``summary``."""

    def __init__(self, config: TrainConfig, ctx, hooks: list | None = None):
        self.config = config
        self.ctx = ctx
        self.hooks = list(hooks or [])
        self.is_chief = ctx.is_chief
        self.stop_signal = 0  # set by a signal hook; the ranks agree on it every step
        self.stop_agreed = False
        self.restored: str | None = None  # the checkpoint a hook resumed from
        self.restored_digest: str | None = None
        self.metrics: dict = {}
        self.log_files: list[str] = []  # files a hook writes that belong in the run's record
        self.summary: dict = {}
        self.step = self.start_step = 0
        self.bn_freeze_step: int | None = None  # from this step BN uses moving statistics
        self._retraced = False  # the next step traces its function again

    # -- hooks ---------------------------------------------------------------------------------
    def _call(self, event: str, *args, reverse: bool = False) -> None:
        for hook in reversed(self.hooks) if reverse else self.hooks:
            getattr(hook, event)(self, *args)

    def save_checkpoint(self, step: int) -> str:
        """Save the state at STEP (rank 0) and tell the hooks; returns the checkpoint path."""
        path = self.store.save(step)
        self._call("on_checkpoint", step, path)
        return path

    def state_digest(self) -> str:
        """sha256 of the optimizer, step and EMA state (what a resume must restore)."""
        return weights_digest(self.state_vars[len(self.model.variables):])

    @property
    def run_params(self) -> dict:
        """The config and the derived lengths, flat (MLflow params, dllogger PARAMETER)."""
        return {**self.config.flatten(),
                **{f"derived.{k}": v for k, v in self.lengths.items()},
                "derived.world_size": self.ctx.size, "derived.precision_policy": self.policy}

    # -- the run -------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``total_steps``; returns the summary dict the hooks filled in."""
        error: BaseException | None = None
        try:
            self._resolve()  # bad data or init fails here, before any phase line
            self._call("on_setup")
            self._build()
            self._call("on_restore")
            self.ctx.broadcast(self.state_vars)  # rank 0's initial or restored state everywhere
            self.start_step = self.step = int(self.step_var.numpy())
            if self.start_step >= self.total_steps and self.is_chief:
                log.info("checkpoint is at step %d >= %d steps: nothing to train",
                         self.start_step, self.total_steps)
            batches = iter(self.task.dataset(self.config, shard_index=self.ctx.rank,
                                             num_shards=self.ctx.size, is_training=True))
            self._report_frozen()
            self.summary = self._initial_summary()
            self._call("on_train_begin")
            switch = self.bn_freeze_step
            if switch is not None and switch < self.step < self.total_steps:
                self._freeze_batch_norm(resumed=True)  # the checkpoint is past the switch
            while self.step < self.total_steps:
                if self.step == switch:
                    self._freeze_batch_norm()
                self._run_step(*next(batches))
            self._finish()
            return self.summary
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._call("on_exit", error, reverse=True)

    def _run_step(self, images, labels) -> None:
        import tensorflow as tf

        losses, flag = self.train_step(images, labels,
                                       tf.constant(float(self.stop_signal > 0)))
        self.step += 1
        self.meter.step(warmup=self._retraced)
        self._retraced = False
        total_loss = float(losses["total_loss"])
        if not math.isfinite(total_loss):
            raise TrainingDiverged(f"loss is {total_loss} at step {self.step} "
                                   f"({self.config.model}, {self.policy})")
        logs = None
        if self.step % self.config.train.log_every == 0 or self.step == self.total_steps:
            values = self.ctx.average([float(v) for v in losses.values()])  # every rank
            self.metrics = dict(zip(losses.keys(), values))
            logs = {**self.metrics, "learning_rate": self.current_lr(),
                    "images_per_second": self.meter.window() * self.ctx.size}
        self.stop_agreed = float(flag[0]) > 0  # any rank's stop signal, agreed by all
        self._call("on_step_end", self.step, logs)

    def _finish(self) -> None:
        # Trainable weights agree by construction (same start, same averaged gradients);
        # with several ranks every rank says so in its output, before anything is synchronized.
        digest = weights_digest(self.model.trainable_variables)
        if self.ctx.size > 1:
            print(f"rank {self.ctx.rank}/{self.ctx.size} final trainable weights sha256 "
                  f"{digest}", flush=True)
        self.summary["trainable_sha256"] = digest
        self._call("on_train_end", reverse=True)

    def current_lr(self) -> float:
        inner = self.optimizer.inner_optimizer if self.loss_scaling else self.optimizer
        return float(self.schedule(inner.iterations))

    def _initial_summary(self) -> dict:
        return {
            "task": self.config.task, "model": self.config.model, "world_size": self.ctx.size,
            "rank": self.ctx.rank, "precision_policy": self.policy,
            "xla": self.config.precision.xla, "total_steps": self.total_steps,
            "resumed_from_step": self.start_step if self.restored else None,
            "restored_checkpoint": self.restored, "restored_state_sha256": self.restored_digest,
            "global_batch": self.lengths["global_batch"], "peak_lr": self.lengths["peak_lr"],
            "mlflow_run_id": None, "init": self.init_report,
        }

    def _report_frozen(self) -> None:
        if self.is_chief and any(self.frozen):
            print(f"init.freeze {self.config.init.freeze!r}: {sum(self.frozen)} of "
                  f"{len(self.frozen)} trainable variables held for {int(self.freeze_until)} "
                  "steps", flush=True)

    # -- building the state and the step functions ----------------------------------------------
    def _resolve(self) -> None:
        """The config completed from the data and the variant, and the schedule's lengths: what
        a bad data URI or a missing pretrained file stops, before anything is built."""
        from efficientdet.training import initialization
        from efficientdet.training.tasks import get_task

        initialization.check_init(self.config)  # a missing pretrained file stops here
        self.task = get_task(self.config.task)
        self.config, self.label_map = self.task.resolve(self.config)
        self.lengths = schedule_lengths(self.config, self.ctx.size, count_examples(self.config))
        self.total_steps = self.lengths["total_steps"]

    def _build(self) -> None:
        import keras
        import tensorflow as tf

        from efficientdet import storage
        from efficientdet.training import initialization
        from efficientdet.training.checkpoints import CheckpointStore
        from efficientdet.training.ema import ExponentialMovingAverage
        from efficientdet.training.optimizer import MomentumSGD
        from efficientdet.training.schedules import WarmupCosine
        from efficientdet.training.throughput import ThroughputMeter

        config = self.config
        self.policy = precision_policy(config.precision.amp)
        keras.mixed_precision.set_global_policy(self.policy)
        keras.utils.set_random_seed(config.seed)

        self.model = self.task.build_model(config)
        self.init_report = (initialization.apply_init(self.model, config)
                            if self.is_chief else {})
        opt = config.optimizer
        self.schedule = WarmupCosine(self.lengths["peak_lr"], self.total_steps,
                                     self.lengths["warmup_steps"], opt.warmup_start_factor,
                                     opt.lr_decay)
        optimizer = MomentumSGD(learning_rate=self.schedule, momentum=opt.momentum,
                                nesterov=opt.nesterov)  # clipping: in apply_gradients
        self.loss_scaling = self.policy == "mixed_float16"
        if self.loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(self.model.trainable_variables)
        self.optimizer = optimizer
        self.ema = (ExponentialMovingAverage(self.model.variables, opt.ema_decay)
                    if opt.ema_decay > 0 else None)
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        parts = {"model": self.model, "optimizer": optimizer, "step": self.step_var}
        if self.ema is not None:
            parts["ema"] = self.ema
        self.store = CheckpointStore(
            tf.train.Checkpoint(**parts),
            config.checkpoint.dir or storage.join(config.output, "checkpoints"),
            keep=config.checkpoint.keep, cache_dir=config.data.cache_dir,
            meta={"model": config.model, "num_classes": config.num_classes,
                  "image_size": config.image_size, "model_overrides": config.model_overrides})
        self.state_vars = (list(self.model.variables) + list(optimizer.variables)
                           + [self.step_var])
        if self.ema is not None:
            self.state_vars += list(self.ema.shadows) + [self.ema.num_updates]
        self.meter = ThroughputMeter(config.data.batch_size, self.ctx.size,
                                     config.train.throughput_warmup_steps)
        self.bn_freeze_step = frozen_bn_step(self.total_steps, config.train.frozen_bn_fraction)
        self._build_step_functions()

    def _freeze_batch_norm(self, resumed: bool = False) -> None:
        """BN normalises with its moving statistics from now on (gamma and beta still train),
        and the step function is traced again (a step the throughput leaves out). At the
        switch the ranks first average their statistics and the EMA starts again from the
        current weights; RESUMED past the switch, the checkpoint already holds both."""
        from efficientdet.models.layers import batch_norm_layers

        layers = batch_norm_layers(self.model)
        if not resumed:
            # Each rank's statistics come from its own shard: from now on they normalise, so
            # every rank takes their mean, which is what the final model keeps.
            self.ctx.average_variables([v for layer in layers
                                        for v in (layer.moving_mean, layer.moving_variance)])
            if self.ema is not None:  # the final weights average the phase they are evaluated in
                self.ema.restart()
        for layer in layers:
            layer.use_moving_statistics = True
        self._build_step_functions()
        self._retraced = True
        if self.is_chief:
            log.info("step %d: %d BN layers use their moving statistics for the last %d steps "
                     "(train.frozen_bn_fraction)%s", self.step + 1, len(layers),
                     self.total_steps - self.step, " (resumed past the switch)" if resumed else "")

    def _build_step_functions(self) -> None:
        import tensorflow as tf

        from efficientdet.training import initialization
        from efficientdet.training.optimizer import clip_gradients
        from efficientdet.training.regularization import l2_loss

        config, model, optimizer, task, ctx = (self.config, self.model, self.optimizer,
                                               self.task, self.ctx)
        ema, step_var, loss_scaling = self.ema, self.step_var, self.loss_scaling
        wd = float(config.optimizer.weight_decay)
        trainable = model.trainable_variables
        self.frozen = frozen = initialization.frozen_mask(model, trainable, config)
        freeze_steps = config.init.freeze_steps
        self.freeze_until = freeze_until = tf.constant(
            self.total_steps if freeze_steps is None else freeze_steps, tf.int64)
        clip_norm = config.optimizer.clip_norm or None
        per_tensor_clip = clip_norm if config.optimizer.clip_per_tensor else None

        @tf.function(jit_compile=config.precision.xla, reduce_retracing=True)
        def compute_gradients(images, labels):
            with tf.GradientTape() as tape:
                outputs = model(images, training=True)
                with tf.name_scope("loss"):  # the scopes name the parts in a profile
                    losses = task.loss(outputs, labels, config)
                with tf.name_scope("weight_decay"):
                    l2 = l2_loss(model, wd) if wd else tf.constant(0.0, tf.float32)
                total = losses["loss"] + l2
                scaled = optimizer.scale_loss(total) if loss_scaling else total
            grads = tape.gradient(scaled, trainable)
            return grads, {**losses, "l2_loss": l2, "total_loss": total}

        def apply_gradients(grads):
            if any(frozen):  # zero gradients (and so momentum and decay) while frozen
                live = tf.cast(step_var >= freeze_until, tf.float32)
                grads = [g * tf.cast(live, g.dtype) if f and g is not None else g
                         for g, f in zip(grads, frozen)]
            if clip_norm:
                # Gradients are still loss-scaled under float16: clip at the scaled norms.
                scale = optimizer.dynamic_scale if loss_scaling else 1.0
                grads = clip_gradients(
                    grads, per_tensor_clip and per_tensor_clip * scale, clip_norm * scale)
            optimizer.apply(grads, trainable)
            if ema is not None:
                ema.update()
            step_var.assign_add(1)

        @tf.function(reduce_retracing=True)
        def train_step(images, labels, stop_flag):
            """Returns the losses and the stop flag averaged over ranks (> 0: a rank stops)."""
            grads, losses = compute_gradients(images, labels)
            grads, flag = ctx.allreduce_grads(grads, extra=[stop_flag])
            with tf.name_scope("optimizer"):
                apply_gradients(grads)
            return losses, flag

        self.train_step = train_step
