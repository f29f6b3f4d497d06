"""Run sft.py or reward_modeling.py unchanged, recording what each training step processed and when it ended.

    python bench/timed_train.py RECORD.json [--plain SPEC_JSON] sft.py --model_name_or_path M ...

Instrumentation only: ``Trainer.training_step`` is wrapped to count the token positions of each batch (all of them,
and how many are padding) and timestamp its start, and the callback handler's ``on_step_end`` to timestamp the end
of each optimizer step, after the callbacks (one micro-batch per optimizer step: the benchmark does not accumulate
gradients).
With ``--plain``, plain steps (bench/plain_step.py, ``Interleaved``) of each batch's shape run right after each
optimizer step ends, and the stage's clock resumes when they are done: a step's time is from that resume to its
end, so the plain steps are never counted as the stage's. The script itself runs as ``__main__`` exactly as a user
starts it.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from pathlib import Path


def batch_counts(inputs: dict, pad_token_id: int | None) -> dict[str, int]:
    """Token positions and rows in a batch and how many positions are padding: every ``*input_ids`` tensor is
    counted (a reward batch carries chosen and rejected); pads are the attention mask's zeros, or the pad id where a
    padding-free collator sends no mask."""
    positions = pads = width = rows = 0
    for key, ids in inputs.items():
        if not key.endswith("input_ids") or not hasattr(ids, "numel"):
            continue
        positions += ids.numel()
        rows += ids.shape[0] if ids.dim() > 1 else 1
        width = max(width, ids.shape[-1])
        mask = inputs.get(key.replace("input_ids", "attention_mask"))
        if mask is not None:
            pads += int((mask == 0).sum())
        elif pad_token_id is not None:
            pads += int((ids == pad_token_id).sum())
    return {"positions": positions, "pads": pads, "width": width, "rows": rows}


def main() -> None:
    record_path, *rest = sys.argv[1:]
    spec = None
    if rest[0] == "--plain":
        spec, rest = json.loads(rest[1]), rest[2:]
    script, *args = rest
    import transformers
    from transformers.trainer_callback import CallbackHandler

    steps: list[dict] = []
    starts: list[float] = []
    ends: list[float] = []
    resumes: list[float] = []  # when the stage's clock restarted after each step (after the plain steps, if any)
    plain = None
    if spec is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from bench.plain_step import Interleaved

        plain = Interleaved(spec, spec.pop("dtypes"))
    original_step = transformers.Trainer.training_step
    original_end = CallbackHandler.on_step_end

    def training_step(self, model, inputs, *rest, **kw):
        pad = getattr(self.processing_class, "pad_token_id", None)
        starts.append(time.perf_counter())
        steps.append(batch_counts(inputs, pad))
        return original_step(self, model, inputs, *rest, **kw)

    def on_step_end(self, *a, **kw):
        out = original_end(self, *a, **kw)  # the callbacks (the NaN guard's checks...) are part of the stage's step
        ends.append(time.perf_counter())
        if plain is not None and steps:
            plain.after(steps[-1]["rows"], steps[-1]["width"])
        resumes.append(time.perf_counter())
        return out

    transformers.Trainer.training_step = training_step
    CallbackHandler.on_step_end = on_step_end
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python script.py` would have it
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    record = {"steps": steps, "step_starts": starts, "step_ends": ends, "step_resumes": resumes}
    if plain is not None:
        record["plain"] = plain.record()
    Path(record_path).write_text(json.dumps(record), encoding="utf-8")
    sys.exit(code)


if __name__ == "__main__":
    main()
