"""The training loop: one for detection and classification, one process or many Horovod ranks.

Per step: forward + loss + gradients in one ``tf.function`` (``jit_compile`` with ``xla``),
then (with several ranks) one grouped allreduce of the gradients outside that function, then
the optimizer step (SGD momentum, warm-up + cosine, per-tensor then global-norm clipping as
automl does, dynamic loss scaling under float16) and the EMA update. Rank 0 broadcasts the
initial (or restored) state, logs and writes checkpoints; a SIGTERM/SIGINT ends the run after
the current step with a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import sys
import tempfile
import threading
from pathlib import Path

from efficientdet import storage, tracking
from efficientdet.training import config as config_lib

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """A signal stopped the run; a checkpoint was written when possible."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name if signum else "a signal"
        super().__init__(f"stopped by {name} after step {step}"
                         + (f"; checkpoint {checkpoint}" if checkpoint else ""))

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum or 15)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps (a second signal acts as usual)."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        print(f"received {signal.Signals(signum).name}: stopping after this step",
              file=sys.stderr, flush=True)
        self.restore()

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def precision_policy(amp: bool) -> str:
    """float32, or mixed_float16 on GPU / mixed_bfloat16 on CPU when AMP is on."""
    import tensorflow as tf

    if not amp:
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def weights_digest(variables) -> str:
    """sha256 over the bytes of the variables, in order (to compare ranks and runs)."""
    h = hashlib.sha256()
    for v in variables:
        h.update(_numpy(v).tobytes())
    return h.hexdigest()


def _numpy(v):
    import numpy as np

    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def _pin_gpu(local_rank: int) -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")


def _schedule_lengths(config: dict, world_size: int) -> dict:
    """steps_per_epoch, total_steps, warmup_steps, global batch and the scaled peak lr."""
    from efficientdet.training.schedules import scaled_lr

    batch = config["data"]["batch_size"]
    global_batch = batch * world_size
    num_examples = config["data"]["num_examples"]
    if num_examples is None:
        from efficientdet.data.pipelines import count_records

        num_examples = count_records(config["data"]["train"], config["data"]["cache_dir"])
    steps_per_epoch = max(1, num_examples // global_batch)
    total = config["train"]["steps"] or max(1, math.ceil(config["train"]["epochs"]
                                                         * steps_per_epoch))
    opt = config["optimizer"]
    warmup = opt["warmup_steps"]
    if warmup is None:
        warmup = round(opt["warmup_epochs"] * steps_per_epoch)
    warmup = max(0, min(warmup, total - 1))
    return {"num_examples": num_examples, "steps_per_epoch": steps_per_epoch,
            "total_steps": total, "warmup_steps": warmup, "global_batch": global_batch,
            "peak_lr": scaled_lr(opt["lr"], global_batch, opt["reference_batch"])}


def _format_progress(step: int, total: int, metrics: dict, lr: float, ips: float) -> str:
    parts = [f"step {step}/{total}"]
    parts += [f"{k} {v:.4f}" for k, v in metrics.items()]
    parts += [f"lr {lr:.5f}", f"{ips:.1f} img/s"]
    return "  ".join(parts)


def train(config: config_lib.TrainConfig) -> dict:
    """Train from a validated `TrainConfig` (``training.config.load_config``); returns a summary dict:
    ``final_step``, ``losses``, ``images_per_second`` (total) and ``_per_rank``, ``model_uri``,
    ``checkpoint``, ``mlflow_run_id``, ``world_size``, ``weights_sha256``, ``resumed_from_step``.

    Raises ``TrainingInterrupted`` after SIGTERM/SIGINT (checkpoint written) and
    ``TrainingDiverged`` on a NaN loss.
    """
    if not isinstance(config, config_lib.TrainConfig):
        raise TypeError(f"train(config): expected a TrainConfig (training.config.load_config or "
                        f"build_config), got {type(config).__name__}")
    from efficientdet.training import distributed

    ctx = distributed.init()
    if not ctx.is_chief:
        logging.getLogger().setLevel(logging.WARNING)
    _pin_gpu(ctx.local_rank)

    import keras

    previous_policy = keras.mixed_precision.global_policy().name
    stop = _StopFlag().install()
    try:
        return _train(config, ctx, stop)
    finally:
        stop.restore()
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: config_lib.TrainConfig, ctx, stop: _StopFlag) -> dict:
    import keras
    import tensorflow as tf

    from efficientdet.detection.regularization import l2_loss
    from efficientdet.training import initialization
    from efficientdet.training.checkpoints import CheckpointStore
    from efficientdet.training.dllogger import DLLogger
    from efficientdet.training.ema import ExponentialMovingAverage
    from efficientdet.training.schedules import WarmupCosine
    from efficientdet.training.tasks import get_task
    from efficientdet.training.throughput import ThroughputMeter

    chief = ctx.is_chief
    initialization.check_init(config)  # a missing pretrained file stops here, not after setup
    task = get_task(config.task)
    config, label_map = task.resolve(config)
    c = config.to_dict()
    lengths = _schedule_lengths(c, ctx.size)
    total_steps = lengths["total_steps"]
    output = c["output"]
    ckpt_uri = c["checkpoint"]["dir"] or storage.join(output, "checkpoints")

    policy = precision_policy(c["precision"]["amp"])
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(c["seed"])
    if c["data"]["deterministic"]:
        # Same seed, same loss curve: kernels that reduce in a fixed order (a few percent
        # slower on CPU) on top of the input pipeline's fixed order and augmentation seeds.
        tf.config.experimental.enable_op_determinism()
    xla = c["precision"]["xla"]

    model = task.build_model(config)
    init_report = initialization.apply_init(model, config) if chief else {}
    opt_cfg = c["optimizer"]
    schedule = WarmupCosine(lengths["peak_lr"], total_steps, lengths["warmup_steps"],
                            opt_cfg["warmup_start_factor"])
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule, momentum=opt_cfg["momentum"], nesterov=opt_cfg["nesterov"],
        global_clipnorm=opt_cfg["clip_norm"] or None)
    loss_scaling = policy == "mixed_float16"
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    ema = (ExponentialMovingAverage(model.variables, opt_cfg["ema_decay"])
           if opt_cfg["ema_decay"] > 0 else None)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    parts = {"model": model, "optimizer": optimizer, "step": step_var}
    if ema is not None:
        parts["ema"] = ema
    checkpoint = tf.train.Checkpoint(**parts)
    store = CheckpointStore(checkpoint, ckpt_uri, keep=c["checkpoint"]["keep"],
                            cache_dir=c["data"]["cache_dir"],
                            meta={k: c.get(k) for k in ("model", "num_classes",
                                                             "image_size", "model_overrides")})

    state_vars = list(model.variables) + list(optimizer.variables) + [step_var]
    if ema is not None:
        state_vars += list(ema.shadows) + [ema.num_updates]

    restored = None
    if chief and c["checkpoint"]["resume"]:
        restored = store.restore_latest()
    ctx.broadcast(state_vars)  # rank 0's initial or restored state everywhere
    start_step = int(step_var.numpy())
    restored_digest = weights_digest(state_vars[len(model.variables):]) if restored else None
    if start_step >= total_steps and chief:
        log.info("checkpoint is at step %d >= %d steps: nothing to train", start_step,
                 total_steps)

    dataset = task.dataset(config, shard_index=ctx.rank, num_shards=ctx.size, is_training=True)
    batches = iter(dataset)

    wd = float(opt_cfg["weight_decay"])
    trainable = model.trainable_variables
    frozen = initialization.frozen_mask(model, trainable, config)
    freeze_steps = c["init"]["freeze_steps"]
    freeze_until = tf.constant(total_steps if freeze_steps is None else freeze_steps, tf.int64)
    if chief and any(frozen):
        print(f"init.freeze {c['init']['freeze']!r}: {sum(frozen)} of {len(trainable)} "
              f"trainable variables held for {int(freeze_until)} steps", flush=True)

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def compute_gradients(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            losses = task.loss(outputs, labels, config)
            l2 = l2_loss(model, wd) if wd else tf.constant(0.0, tf.float32)
            total = losses["loss"] + l2
            scaled = optimizer.scale_loss(total) if loss_scaling else total
        grads = tape.gradient(scaled, trainable)
        return grads, {**losses, "l2_loss": l2, "total_loss": total}

    per_tensor_clip = opt_cfg["clip_norm"] if opt_cfg["clip_per_tensor"] else None

    @tf.function(reduce_retracing=True)
    def apply_gradients(grads):
        if any(frozen):  # zero gradients (and so momentum and decay) while frozen
            live = tf.cast(step_var >= freeze_until, tf.float32)
            grads = [g * tf.cast(live, g.dtype) if f and g is not None else g
                     for g, f in zip(grads, frozen)]
        if per_tensor_clip:
            # Gradients are still loss-scaled under float16: clip at the scaled norm.
            limit = per_tensor_clip * (optimizer.dynamic_scale if loss_scaling else 1.0)
            grads = [tf.clip_by_norm(g, limit) for g in grads]
        optimizer.apply(grads, trainable)
        if ema is not None:
            ema.update()
        step_var.assign_add(1)

    def current_lr() -> float:
        inner = optimizer.inner_optimizer if loss_scaling else optimizer
        return float(schedule(inner.iterations))

    # --- logging (rank 0) --------------------------------------------------------------
    dl_file = c["logging"]["dllogger_file"]
    dl_upload = None
    if chief and dl_file is None:
        if storage.is_remote(output):
            dl_file = str(Path(tempfile.mkdtemp(prefix="effdet-dllogger-")) / "dllogger.json")
            dl_upload = storage.join(output, "dllogger.json")
        else:
            dl_file = str(Path(output) / "dllogger.json")
    dl = (DLLogger(dl_file, sys.stdout if c["logging"]["dllogger_stdout"] else None)
          if chief else None)
    meter = ThroughputMeter(c["data"]["batch_size"], ctx.size,
                            c["train"]["throughput_warmup_steps"])
    log_every = c["train"]["log_every"]
    every_ckpt = c["checkpoint"]["every_steps"]
    run_params = {**config.flatten(), **{f"derived.{k}": v for k, v in lengths.items()},
                  "derived.world_size": ctx.size, "derived.precision_policy": policy}

    summary: dict = {
        "task": c["task"], "model": c["model"], "world_size": ctx.size,
        "rank": ctx.rank,
        "precision_policy": policy, "xla": xla, "total_steps": total_steps,
        "resumed_from_step": start_step if restored else None, "restored_checkpoint": restored,
        "restored_state_sha256": restored_digest, "global_batch": lengths["global_batch"],
        "peak_lr": lengths["peak_lr"], "mlflow_run_id": None, "init": init_report,
    }
    tracking_ctx = (tracking.step_run("train", params=run_params,
                                      log_system_metrics=c["logging"]["system_metrics"])
                    if chief and c["logging"]["mlflow"] else _null_context())
    last_saved = start_step if restored else None
    last_metrics: dict = {}
    with tracking_ctx as run:
        if run is not None:
            summary["mlflow_run_id"] = run.info.run_id
            tracking.log_dict(c, "config.json")
        if chief:
            dl.parameters(run_params)
            print(f"training {c['model']} ({c['task']}, {c['num_classes']} "
                  f"classes, {c['image_size']} px) on {ctx.size} rank(s): steps "
                  f"{start_step}->{total_steps}, global batch {lengths['global_batch']}, peak lr "
                  f"{lengths['peak_lr']:.4g}, {policy}{', XLA' if xla else ''}"
                  + (f"; resumed from {restored} (state sha256 {restored_digest})"
                     if restored else ""), flush=True)
            for kind, info in init_report.items():
                print(f"init.{kind} {info['source']}: loaded {info['loaded']} variables"
                      + (f", re-initialised {', '.join(info['reinitialised'])}"
                         if info.get("reinitialised") else ""), flush=True)
        step = start_step
        try:
            while step < total_steps:
                images, labels = next(batches)
                grads, losses = compute_gradients(images, labels)
                flag = [float(stop.signum > 0)]
                grads, flag = ctx.allreduce_grads(grads, extra=flag)
                apply_gradients(grads)
                step += 1
                total_loss = float(losses["total_loss"])
                meter.step()
                if not math.isfinite(total_loss):
                    raise TrainingDiverged(f"loss is {total_loss} at step {step} "
                                           f"({c['model']}, {policy})")
                if step % log_every == 0 or step == total_steps:
                    values = ctx.average([float(v) for v in losses.values()])
                    last_metrics = dict(zip(losses.keys(), values))
                    ips = meter.window() * ctx.size
                    if chief:
                        lr = current_lr()
                        print(_format_progress(step, total_steps, last_metrics, lr, ips),
                              flush=True)
                        dl.log(step, {**last_metrics, "learning_rate": lr,
                                      "images_per_second": ips})
                        tracking.log_metrics({**last_metrics, "learning_rate": lr,
                                              "images_per_second": ips}, step=step)
                signalled = float(flag[0]) > 0 if flag else stop.signum > 0
                if signalled or stop.signum:
                    path = None
                    if chief:
                        path = store.save(step)
                        print(f"checkpoint {path} at step {step}, state sha256 "
                              f"{weights_digest(state_vars[len(model.variables):])}", flush=True)
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, step, path)
                if chief and step % every_ckpt == 0 and step < total_steps:
                    store.save(step)
                    last_saved = step
        finally:
            if chief and dl is not None and dl_upload and Path(dl_file).is_file():
                try:
                    storage.upload_file(dl_file, dl_upload)
                except Exception as exc:  # noqa: BLE001 - logging must not mask the error
                    log.warning("could not upload %s: %s", dl_upload, exc)

        # --- the end: checkpoint, artifact, summary -------------------------------------
        # Trainable weights agree by construction (same start, same averaged gradients);
        # every rank says so in its output, before anything is synchronized.
        trainable_digest = weights_digest(model.trainable_variables)
        print(f"rank {ctx.rank}/{ctx.size} final trainable weights sha256 {trainable_digest}",
              flush=True)
        # BN moving statistics come from each rank's own shard: average them (and their EMA).
        trainable_ids = {id(v) for v in model.trainable_variables}
        stats = [v for v in model.variables if id(v) not in trainable_ids]
        if ema is not None:
            stats += [s for s, v in zip(ema.shadows, ema.model_variables)
                      if id(v) not in trainable_ids]
        ctx.average_variables(stats)
        ckpt_path = None
        if chief:
            ckpt_path = store.save(step) if last_saved != step else store.latest
        through = meter.summary()
        digest = weights_digest(model.variables)
        state_digest = weights_digest(state_vars[len(model.variables):])
        print(f"rank {ctx.rank}/{ctx.size} final weights sha256 {digest}", flush=True)
        summary.update({
            "trainable_sha256": trainable_digest,
            "final_step": step, "losses": last_metrics, "checkpoint": ckpt_path,
            "images_per_second": through["images_per_second"],
            "images_per_second_per_rank": through["images_per_second_per_rank"],
            "throughput": through, "weights_sha256": digest, "state_sha256": state_digest,
        })
        model_uri = storage.join(output, "model")
        if chief:
            from efficientdet.models.artifact import save_artifact

            meta = {
                "task": c["task"], "model": c["model"],
                "num_classes": c["num_classes"], "image_size": c["image_size"],
                "label_map": label_map, "overrides": c.get("model_overrides") or {},
                "training": {k: summary[k] for k in (
                    "final_step", "losses", "images_per_second", "world_size",
                    "precision_policy", "mlflow_run_id")} | {"ema": ema is not None},
            }
            if ema is not None:
                with ema.swapped():
                    save_artifact(model, meta, model_uri)
            else:
                save_artifact(model, meta, model_uri)
            summary["model_uri"] = model_uri
            final = {k: v for k, v in through.items() if v is not None}
            print("throughput: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in final.items()), flush=True)
            dl.log([], {**last_metrics, **final, "final_step": step})
            tracking.log_metrics({k: v for k, v in final.items()
                                  if isinstance(v, (int, float))}, step=step)
            _write_summary(output, summary)
            if run is not None:
                _log_run_artifacts(model_uri, store, ckpt_path, dl_file)
        else:
            summary["model_uri"] = model_uri
    if dl is not None:
        dl.close()
    return summary


def _log_run_artifacts(model_uri: str, store, ckpt_path: str | None, dl_file: str | None):
    """The final model artifact and checkpoint, and the dllogger file, into the MLflow run."""
    if storage.is_remote(model_uri):
        local_model = storage.sync_to_local(model_uri)
    else:
        local_model = Path(model_uri)
    tracking.log_artifacts(str(local_model), "model")
    if ckpt_path:
        for p in sorted(Path(store.local_dir).glob(Path(ckpt_path).name + ".*")):
            tracking.log_artifact(str(p), "checkpoint")
        tracking.log_artifact(str(Path(store.local_dir) / "checkpoint"), "checkpoint")
    if dl_file and Path(dl_file).is_file():
        tracking.log_artifact(dl_file, "logs")


def _write_summary(output: str, summary: dict) -> None:
    storage.write_text(storage.join(output, "summary.json"),
                       json.dumps(summary, indent=2, sort_keys=True, default=str))


class _null_context:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
