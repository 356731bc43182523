"""A training run, the same for both stages: the run's steps in order (`run_stage`), the loop over the batches
(`run_training_loop`) and the machinery around them: the accelerator, the run folder, resume, the optimizer's
parameter groups, the scheduler, logging and the best checkpoint.

A stage (contrastive.py's stage 1, generation.py's stage 2) says only what differs: its model, data and optimizer,
the loss of a batch, what it validates, what it saves as its best model, what it logs beside the loss and what it
does with its release at the end. See `Stage`."""

import contextlib
import dataclasses
import importlib.util
import json
import os
import time

import torch
from tqdm.auto import tqdm

from modeling_cliptt5.data.atomic_writes import remove_leftovers
from modeling_cliptt5.training.data import (
    BadSampleLog, load_training_dataset, micro_batches, total_steps, training_loader, validation_loader,
)
from modeling_cliptt5.training.state import (
    MetricsLog, list_states, load_training_state, plot_curves, save_training_state,
)


@dataclasses.dataclass
class StageParts:
    """What a stage builds for its run, before the run prepares it for its devices and processes."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_set: object  # training.data.StudyDataset
    validation_set: object  # None without a validation split
    collate: object


class Stage:
    """What a stage adds to the run (`run_stage`) and its loop (`run_training_loop`); the run owns the order of the
    steps, the loop owns the steps, accumulation, clipping, logging, the validation schedule, the best-model choice
    and the states. `bad_log` is the run's log of unreadable studies (set by run_stage before the loop)."""

    description = "training"  # the progress bar's label

    def __init__(self, config, accelerator):
        self.config, self.accelerator = config, accelerator
        self.model = self.eval_loader = self.bad_log = None

    # --- before the loop ---

    def build(self, data):
        """StageParts for `data` ({split: rows}): the model, its optimizer, the training and validation studies."""
        raise NotImplementedError

    def prepared(self, model, eval_loader):
        """Hands over the model and validation loader as prepared for the run's devices (before the states of a
        resumed run are loaded: a loader prepared later would not be restored with them)."""
        self.model, self.eval_loader = model, eval_loader

    def describe(self, num_steps):
        """The line printed before the first step: what trains on what."""
        raise NotImplementedError

    # --- the loop's hooks ---

    def train_mode(self):
        """Puts the model in training mode (after validation too)."""
        raise NotImplementedError

    def begin_step(self, step, num_steps):
        """Called before the micro-batches of each optimizer step."""

    def loss(self, batch, step, micro_step):
        """(loss, {name: detached tensor} of loss parts to log as train/<name>) of one micro-batch, forward only:
        the loop calls backward."""
        raise NotImplementedError

    def after_optimizer_step(self):
        """Called after each optimizer step (e.g. to clamp a parameter)."""

    def log_values(self):
        """{name: value} logged beside train/loss at each logging step."""
        return {}

    def validate(self, step):
        """{metric: value} on the validation studies; config.best_metric is among them."""
        raise NotImplementedError

    def save_best(self, step, metrics):
        """Writes the best model so far (`metrics` are its validation metrics, {} without a validation split)."""
        raise NotImplementedError

    # --- after the loop ---

    def finish(self):
        """On the main process, once the best model is written: what the stage adds to it."""

    def curve_metrics(self, last_metrics):
        """The validation metrics drawn beside the loss curves."""
        return list(last_metrics)

    def written(self):
        """What the run leaves for the next step, for the last line ("release runs/x/best")."""
        raise NotImplementedError

    def result(self, trainer_state, last_metrics):
        """What the stage's train_* function returns."""
        raise NotImplementedError


def run_stage(config, stage_class):
    """A whole training run of one stage: the accelerator, the run folder (start_run), the seed, the data, the
    stage's parts, the steps, the parts prepared for the devices, resume, the loop, the stage's finish, the curves
    and a last line; returns stage.result()."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(config)
    metrics_log = start_run(config, accelerator)
    set_seed(config.seed)
    data = load_training_dataset(config, accelerator)
    stage = stage_class(config, accelerator)
    parts = stage.build(data)
    num_steps = total_steps(config, len(parts.train_set), accelerator.num_processes)
    model, optimizer, scheduler, train_loader, eval_loader = prepare_training(
        config, accelerator, parts.model, parts.optimizer, num_steps, parts.train_set, parts.validation_set,
        parts.collate)
    stage.prepared(model, eval_loader)
    trainer_state, stage.bad_log = resume_if_asked(config, accelerator, metrics_log)
    accelerator.print(stage.describe(num_steps))
    started, start_step = time.perf_counter(), trainer_state["step"]
    last_metrics = run_training_loop(stage, config, accelerator, model, optimizer, scheduler,
                                     micro_batches(train_loader, accelerator, config, trainer_state["step"]),
                                     num_steps, trainer_state, stage.bad_log, metrics_log,
                                     validates=eval_loader is not None)
    if accelerator.is_main_process:
        stage.finish()
        curves = plot_curves(metrics_log.read(), os.path.join(config.output_dir, "training_curves.png"),
                             metric_names=stage.curve_metrics(last_metrics))
        elapsed = time.perf_counter() - started
        steps_done = trainer_state["step"] - start_step
        samples = steps_done * config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
        print(f"done: {steps_done} steps in {elapsed:.0f} s ({samples / max(elapsed, 1e-9):.1f} studies/s); "
              f"best validation {config.best_metric} = {trainer_state['best_value']} at step "
              f"{trainer_state['best_step']}; {stage.written()}; curves {curves}; "
              f"{stage.bad_log.count} unreadable studies skipped")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return stage.result(trainer_state, last_metrics)


def run_training_loop(stage, config, accelerator, model, optimizer, scheduler, batches, num_steps, trainer_state,
                      bad_log, metrics_log, validates):
    """Steps `model` from trainer_state["step"] to num_steps on `batches` (training.data.micro_batches); validates
    every eval_every_steps (when `validates`) and saves the best model by config.best_metric, or the last one
    without validation; saves a resumable state every save_every_steps. Returns the last validation metrics."""
    accumulation = config.gradient_accumulation_steps
    window_losses, window_parts, window_start, window_samples = [], {}, time.perf_counter(), 0
    last_metrics = {}
    progress = tqdm(total=num_steps, initial=trainer_state["step"], desc=stage.description, unit="step",
                    disable=not accelerator.is_local_main_process)
    stage.train_mode()
    while trainer_state["step"] < num_steps:
        step = trainer_state["step"]
        stage.begin_step(step, num_steps)
        for micro_step in range(accumulation):
            epoch, batch = next(batches)
            bad_log.record(batch["skipped"], step)
            # Gradients are all-reduced only on the last micro-batch of the step.
            sync = micro_step == accumulation - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                loss, parts = stage.loss(batch, step, micro_step)
                accelerator.backward(loss / accumulation)
            window_losses.append(loss.detach().float())
            for name, value in parts.items():
                window_parts.setdefault(name, []).append(value.float())
            window_samples += len(batch["ids"])
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stage.after_optimizer_step()
        trainer_state["step"] = step = step + 1
        progress.update(1)

        if step % config.log_every_steps == 0 or step == num_steps:
            mean_loss = _mean_over_ranks(accelerator, window_losses)
            record = {"step": step, "epoch": epoch, "train/loss": mean_loss,
                      **{f"train/{name}": _mean_over_ranks(accelerator, values) for name, values in window_parts.items()},
                      **stage.log_values(),
                      "train/samples_per_second": samples_per_second(accelerator, window_samples, window_start),
                      **{f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups}}
            log_metrics(accelerator, metrics_log, record)
            progress.set_postfix(loss=f"{mean_loss:.3f}")
            window_losses, window_parts, window_start, window_samples = [], {}, time.perf_counter(), 0
        if validates and (step % config.eval_every_steps == 0 or step == num_steps):
            last_metrics = stage.validate(step)
            log_metrics(accelerator, metrics_log,
                        {"step": step, **{f"validation/{name}": value for name, value in last_metrics.items()}})
            if config.best_metric not in last_metrics:
                raise ValueError(f"best_metric {config.best_metric!r} is not among the validation metrics "
                                 f"{sorted(last_metrics)}")
            if better(last_metrics[config.best_metric], trainer_state["best_value"], config.best_metric):
                trainer_state.update(best_value=last_metrics[config.best_metric], best_step=step)
                stage.save_best(step, last_metrics)
            stage.train_mode()
        if step % config.save_every_steps == 0 or step == num_steps:
            trainer_state["bad_samples"] = bad_log.count
            save_training_state(accelerator, config.states_dir, dict(trainer_state), config.keep_last_states)
    progress.close()
    if not validates:  # no validation split: the saved model is the last one
        stage.save_best(trainer_state["step"], {})
    return last_metrics


def _mean_over_ranks(accelerator, values):
    return accelerator.reduce(torch.stack(values).mean(), reduction="mean").item()


# --- the machinery around the loop ------------------------------------------------------------------------------

def make_accelerator(config):
    """Accelerator with the run's precision and tracker; devices and processes come from `accelerate launch`.

    Its seedable sampler shuffles epoch e of a prepared loader with the seed data_seed + e on every rank (without
    it, epoch e continues the generator where epoch e - 1 left it: a resumed run would have to replay every earlier
    shuffle)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    _refuse_fsdp_without_gpus()
    log_with = None if config.log_with == "none" else "tensorboard"
    if config.log_with == "auto" and importlib.util.find_spec("tensorboard") is None:
        log_with = None
    # Stage 2: a micro-batch without a follow-up (most of them, in an archive with few priors) leaves the prior's
    # weights and the change head out of that rank's loss; DDP must be told, or it waits for their gradients and
    # stops the run at the next step
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if config.stage == "generation" else []
    return Accelerator(mixed_precision=config.mixed_precision, log_with=log_with, project_dir=config.output_dir,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
                       kwargs_handlers=handlers)


class LaunchError(RuntimeError):
    """The launch cannot train as configured, or lost one of its processes; the message says what to do."""


def _refuse_fsdp_without_gpus():
    """accelerate shards with FSDP only on accelerator devices. Without one, the FSDP launch file either fails inside
    accelerate's plugin (sync_module_states needs a device) or, with sync_module_states off, trains as plain DDP
    without a word: say so before any work is done."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    has_device = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    if on_cpu or not has_device:
        from modeling_cliptt5.training.config import packaged_configs

        raise LaunchError("FSDP needs GPUs: accelerate shards a model only on accelerator devices, and this launch has "
                          f"none. On CPUs launch with {packaged_configs() / 'accelerate' / 'cpu_2proc.yaml'} (DDP) "
                          "instead.")


def lost_contact(error):
    """Whether `error` is a collective that failed because another process of the run died or stopped answering.
    gloo raises a plain RuntimeError that names the peer; NCCL and the rendezvous store raise DistError."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(error)
    return any(sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "Timed out waiting"))


def start_run(config, accelerator):
    """Output folder, leftovers of a killed run removed, the tracker started; returns the metrics log."""
    from modeling_cliptt5.training.config import save_config

    if not config.resume and list_states(config.states_dir):
        raise FileExistsError(f"{config.output_dir} already holds training states of another run: pass --resume to "
                              f"continue it, or choose another output_dir")
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        removed = remove_leftovers(config.output_dir)
        if removed:
            print(f"removed {len(removed)} unfinished folder(s) left by an interrupted run")
        save_config(config, os.path.join(config.output_dir, "training_config.yaml"))
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        hyperparameters = {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
                           for key, value in config.to_dict().items()}
        accelerator.init_trackers("cliptt5", config=hyperparameters)
    return MetricsLog(config.output_dir, enabled=accelerator.is_main_process)


def parameter_groups(model, rates, weight_decay, part_of):
    """AdamW groups: one learning rate per part (`part_of(name)` is a key of `rates`), no weight decay on biases,
    norms, gains and other parameters of fewer than two dimensions (open_clip's convention and T5's)."""
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = part_of(name)
        decay = parameter.ndim >= 2
        key = (part, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": rates[part], "weight_decay": weight_decay if decay else 0.0,
                           "name": f"{part}{'' if decay else '_no_decay'}"}
        groups[key]["params"].append(parameter)
    if not groups:
        raise ValueError("no trainable parameters: check train_vision, train_projection and train_t5")
    return list(groups.values())


def prepare_training(config, accelerator, model, optimizer, num_steps, train_set, validation_set, collate):
    """(model, optimizer, scheduler, training loader, validation loader or None), prepared for the run's devices
    and processes. The scheduler is stepped by hand once per optimizer step (prepare() would step it once per
    process) and saved with the states."""
    scheduler = make_scheduler(config, optimizer, num_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    train_loader = training_loader(train_set, collate, config, accelerator)
    eval_loader = None if validation_set is None else validation_loader(validation_set, collate, config, accelerator)
    return model, optimizer, scheduler, train_loader, eval_loader


def make_scheduler(config, optimizer, num_steps):
    from transformers import get_scheduler

    warmup = config.warmup_steps or int(config.warmup_ratio * num_steps)
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=num_steps)


def resume_if_asked(config, accelerator, metrics_log):
    """Loads the latest complete state when config.resume is set; returns its trainer_state (or a fresh one) and
    the log of unreadable studies, counting on from the state's."""
    trainer_state = _latest_state(config, accelerator, metrics_log)
    bad_log = BadSampleLog(config.output_dir, config.max_bad_samples, accelerator.process_index,
                           trainer_state["bad_samples"])
    return trainer_state, bad_log


def _latest_state(config, accelerator, metrics_log):
    fresh = {"step": 0, "best_value": None, "best_step": None, "bad_samples": 0}
    if not config.resume:
        return fresh
    states = list_states(config.states_dir)
    if not states:
        accelerator.print(f"--resume: no saved state in {config.states_dir}, starting from step 0")
        return fresh
    trainer_state = load_training_state(accelerator, states[-1])
    metrics_log.truncate_after(trainer_state["step"])
    accelerator.print(f"resumed from {states[-1]} (step {trainer_state['step']})")
    return {**fresh, **trainer_state}


def better(value, best, metric):
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def samples_per_second(accelerator, samples, since):
    """Studies per second over all ranks from this rank's count since time.perf_counter() gave `since`."""
    return samples * accelerator.num_processes / max(time.perf_counter() - since, 1e-9)


def log_metrics(accelerator, metrics_log, record):
    metrics_log.write(record)
    accelerator.log({key: value for key, value in record.items() if key != "step"}, step=record["step"])


def full_parameters(model, accelerator):
    """Under FSDP every rank gathers the whole model for validation, so that forward and generate need no
    collectives (generate stops after different numbers of tokens on each rank; DDP ranks hold the whole model)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(model, writeback=False)
    return contextlib.nullcontext()
