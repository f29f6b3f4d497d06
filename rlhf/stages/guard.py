"""Faults during Trainer training: SIGTERM (checkpoint, exit 143), NaN/inf steps, failed checkpoint saves."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from rlhf.errors import RunError, UsageError, first_line
from rlhf.outputs.trainer_checkpoints import checkpoints_dir, latest_trainer_checkpoint
from rlhf.runtime.distributed import Collectives
from rlhf.stages.saving import nonfinite_parameters

logger = logging.getLogger("rlhf.stages.guard")


NONFINITE_CHOICES = ("stop", "skip")


class TrainingGuard(TrainerCallback):
    """Keeps a Trainer run recoverable. Use as ``with TrainingGuard(...) as guard:`` around training and saving.

    * SIGTERM (what schedulers send before preemption): the current optimizer step finishes, a checkpoint is
      written (whatever ``--save_strategy`` says), training stops and ``train`` reports how to resume; the script
      then exits with code 143. A SIGTERM during the final save waits for the save to finish.
    * A non-finite loss (NaN/inf gradients): the update of that step is discarded before the optimizer sees it, so
      the weights stay finite. ``stop`` (default) ends training with an error and saves nothing from that step;
      ``skip`` logs the step, counts it and goes on. A checkpoint is never written from weights holding NaN/inf.
      With ``--fp16`` the gradient scaler already skips overflowing steps; with DeepSpeed gradients are not
      visible here and this check does nothing.
    * A checkpoint save that raises (disk full): one line naming the checkpoint, instead of a traceback.

    Every process takes part in the same decisions (one small all-reduce per optimizer step), so ranks never
    disagree about stopping.
    """

    def __init__(self, nonfinite: str = "stop", output_dir: str | None = None):
        if nonfinite not in NONFINITE_CHOICES:
            raise UsageError(f"--nonfinite_loss: expected one of {', '.join(NONFINITE_CHOICES)}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.output_dir = output_dir  # the stage's --output_dir (its checkpoints: rlhf.outputs.trainer_checkpoints)
        self.preempted = False  # stopped by SIGTERM after writing a checkpoint
        self.nonfinite_steps: list[int] = []  # optimizer steps whose update was discarded
        self.stopped_at: int | None = None  # step at which a non-finite loss stopped training
        self._signal = False
        self._agreed_signal = False
        self._bad_step = False
        self._saving: int | None = None  # a checkpoint save is due or under way for this step
        self._evaluating = False
        self._previous_handler: Any = None
        self._step_norm: Any = None  # the gradient norm the Trainer took this step (see train)

    # -------------------------------------------------------------- signal handling
    def __enter__(self) -> TrainingGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._signal = True  # acted on at the end of the current optimizer step (no logging in a handler)

    # -------------------------------------------------------------- Trainer events
    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        bad = False
        norm, self._step_norm = self._step_norm, None
        if model is not None and not args.fp16:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if grads and norm is None:  # the Trainer took no norm we can read (e.g. a sharded one): take ours
                norm = _total_norm(grads)
            bad = bool(grads) and not bool(torch.isfinite(norm))
        bad, self._agreed_signal = _agree(args, bad, self._signal)
        if bad:
            for param in model.parameters():
                param.grad = None  # the optimizer skips parameters without gradients: no update this step
            self._bad_step = True

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._bad_step:
            self._bad_step = False
            self.nonfinite_steps.append(state.global_step)
            if self.nonfinite == "stop":
                logger.error("step %d: non-finite loss or gradients (NaN/inf); stopping", state.global_step)
                self.stopped_at = state.global_step
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
                return
            logger.warning(
                "step %d: non-finite loss or gradients (NaN/inf); update skipped (%d skipped so far)",
                state.global_step,
                len(self.nonfinite_steps),
            )
        if self._agreed_signal:
            logger.warning("SIGTERM: step %d finished; writing a checkpoint, then stopping", state.global_step)
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        self._track_save(state, control, model)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.stopped_at is not None or self.preempted:
            control.should_save = False  # nothing more after a stop (the SIGTERM checkpoint is already written)
        self._track_save(state, control, model)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._evaluating = False

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._saving = None

    def _track_save(self, state: Any, control: Any, model: Any) -> None:
        if control.should_save and model is not None:
            bad = nonfinite_parameters(model)
            if bad:
                logger.error("step %d: weights hold NaN/inf (e.g. %s); no checkpoint", state.global_step, bad[0])
                self.stopped_at = state.global_step
                control.should_save = False
                control.should_training_stop = True
        self._saving = state.global_step if control.should_save else None
        self._evaluating = bool(control.should_evaluate)

    # -------------------------------------------------------------- the run
    def train(self, trainer: Any, resume_from_checkpoint: str | None) -> Any:
        """``trainer.train`` with the faults above turned into one-line errors or a resumable stop."""
        output_dir = self.output_dir or str(Path(trainer.args.output_dir).parent)
        if resume_from_checkpoint:
            logger.info("resuming from %s", resume_from_checkpoint)
        accelerator = getattr(trainer, "accelerator", None)  # every Trainer has one; a stand-in may not
        if accelerator is not None:
            self._reuse_step_norm(accelerator)
        try:
            result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        except Exception as err:
            if self._saving is None or self._evaluating:
                raise
            raise RunError(
                f"saving {checkpoints_dir(output_dir)}/checkpoint-{self._saving} failed ({first_line(err)}); it is "
                f"incomplete and will not be resumed from. {self._resume_hint(output_dir)}; free space first"
            ) from err
        finally:
            if accelerator is not None:
                vars(accelerator).pop("clip_grad_norm_", None)  # the accelerator's own method again
        if self.stopped_at is not None:
            raise RunError(
                f"training stopped at step {self.stopped_at}: non-finite loss, gradients or weights (NaN/inf); "
                f"nothing was saved from that step. {self._resume_hint(output_dir)} after lowering --learning_rate "
                "or checking the data and model, or pass --nonfinite_loss skip to discard such steps"
            )
        if self.preempted:
            logger.warning(
                "stopped by SIGTERM at step %d; checkpoint: %s. To go on, rerun the same command with "
                "--resume_from_checkpoint latest",
                trainer.state.global_step,
                latest_trainer_checkpoint(output_dir),
            )
        if self.nonfinite_steps:
            logger.warning(
                "%d steps with a non-finite loss were skipped: %s", len(self.nonfinite_steps), self.nonfinite_steps
            )
        return result

    def _reuse_step_norm(self, accelerator: Any) -> None:
        """Keep the global gradient norm the Trainer takes before every optimizer step (to clip, or with clipping
        off to log it; both through ``accelerator.clip_grad_norm_``), so that the non-finite check does not read
        every gradient a second time: that pass was 3-4% of a bf16 step of a 135M model on one CPU thread. A NaN/inf
        gradient makes that norm NaN/inf exactly as it makes our own. Only a plain tensor is kept (a sharded
        DTensor norm, or none at all, means the check takes its own). Undone when ``train`` returns."""
        clip = accelerator.clip_grad_norm_

        def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
            norm = clip(*args, **kwargs)
            self._step_norm = norm if type(norm) is torch.Tensor else None
            return norm

        accelerator.clip_grad_norm_ = clip_grad_norm_

    @staticmethod
    def _resume_hint(output_dir: str) -> str:
        latest = latest_trainer_checkpoint(output_dir)
        if latest is None:
            return "There is no complete checkpoint to resume from; rerun"
        return f"Last complete checkpoint: {latest}; rerun with --resume_from_checkpoint latest"


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' global 2-norm: NaN/inf exactly when some gradient holds NaN/inf (or overflows)."""
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), dtype=torch.float32) for g in grads])
    return torch.linalg.vector_norm(norms)


def _agree(args: Any, bad: bool, signalled: bool) -> tuple[bool, bool]:
    """The same two decisions on every process: any rank's NaN or SIGTERM counts for all."""
    return Collectives(args.device).any(bad, signalled)
