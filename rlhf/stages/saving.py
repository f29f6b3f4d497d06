"""Publishing a Trainer stage's result: adapter, merged model, tokenizer, prompt format, metrics; complete or absent."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rlhf.data.pairs import DropReport
from rlhf.data.prompt_format import PromptFormat
from rlhf.errors import RunError, first_line
from rlhf.outputs.folders import STAGING, discard_staging, prepare_staging, publish_staged
from rlhf.outputs.model_card import write_model_card
from rlhf.runtime.distributed import (
    Collectives,
    full_state_dict,
    nonfinite_tensors,
    rebuild_from_state_dict,
    shards_parameters,
)

logger = logging.getLogger("rlhf.stages.saving")


def save_stage_output(
    trainer: Any,
    output_dir: Path,
    tokenizer: Any,
    fmt: PromptFormat,
    metrics: dict[str, Any],
    stage: str,
    data_report: DropReport,
    files: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
) -> None:
    """Write the adapter, the merged model, tokenizer, prompt format, metrics and our model card (``card``: its
    inputs but the metrics and format, rlhf.outputs.model_card); then mark the folder complete.

    Everything is written into a staging folder first and swapped in at the end, ``COMPLETE.json`` last
    (``rlhf.outputs.folders.publish_staged``): a save that fails (disk full) leaves the checkpoints and any previous
    complete result as they were, and nothing marked complete. Weights holding NaN/inf are never saved.

    ``files`` maps extra JSON file names to their content. Every rank calls this (saving may gather sharded
    weights); only the main process writes files.
    """
    from peft import PeftModel

    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    is_peft = isinstance(model, PeftModel)
    sharded = shards_parameters(accelerator)
    main_process = trainer.is_world_process_zero()
    # ZeRO-3/FSDP: no process holds the whole model; gather it once (every process takes part), write on rank 0.
    state = full_state_dict(accelerator, trainer.model_wrapped) if sharded else None
    if sharded:
        bad = Collectives(accelerator.device).broadcast(nonfinite_tensors(state) if main_process else None)
    else:
        bad = nonfinite_parameters(model)
    if bad:
        raise RunError(
            f"{stage}: the trained weights hold NaN/inf values ({len(bad)} tensors, e.g. {bad[0]}); nothing was "
            f"saved in {output_dir}. Lower --learning_rate or check the input model and data"
        )
    try:
        staging = prepare_staging(output_dir) if main_process else output_dir / STAGING
        accelerator.wait_for_everyone()
        if is_peft and not sharded:
            trainer.save_model(str(staging / "adapter"))
        accelerator.wait_for_everyone()
        if main_process:
            plain = rebuild_from_state_dict(model, state) if sharded else model
            if is_peft and sharded:
                plain.save_pretrained(str(staging / "adapter"))
            merged = plain.merge_and_unload() if is_peft else plain
            merged.save_pretrained(str(staging), safe_serialization=True)
            del state, plain, merged
            tokenizer.save_pretrained(str(staging))
            fmt.save(staging)
            payload = {"stage": stage, "data": data_report.summary(), **metrics}
            for name, content in {"metrics.json": payload, **(files or {})}.items():
                (staging / name).write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
            with (staging / "log_history.jsonl").open("w") as handle:
                for row in trainer.state.log_history:
                    handle.write(json.dumps(row) + "\n")
            (staging / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's template card: ours is the folder's
            if card is not None:
                write_model_card(staging, **card, metrics=payload, fmt=fmt)
            publish_staged(output_dir, {"stage": stage, "adapter": is_peft})
            logger.info("%s: model saved to %s", stage, output_dir)
    except Exception as err:
        if main_process:
            discard_staging(output_dir)
        raise RunError(
            f"{stage}: saving the result in {output_dir} failed ({first_line(err)}); nothing was marked complete "
            "and the checkpoints there are intact: free space, then rerun with --resume_from_checkpoint latest"
        ) from err
    trainer.accelerator.wait_for_everyone()


def nonfinite_parameters(model: Any) -> list[str]:
    """Names of parameters holding NaN or inf (empty shards of sharded models are skipped)."""
    with torch.no_grad():
        return [n for n, p in model.named_parameters() if p.numel() and not bool(torch.isfinite(p).all())]
