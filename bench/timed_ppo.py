"""Run rl_training.py unchanged, recording the shape of each PPO update (how many token positions it trained on).

    python bench/timed_ppo.py RECORD.json [--plain SPEC_JSON] rl_training.py --model_name M --reward_model_name R ...

Instrumentation only: ``PPOEngine.update`` is wrapped to note the rollout's rows and width and the configured
minibatch size and epochs; the seconds come from the engine's own ``time/ppo/update`` timer in metrics.jsonl.
With ``--plain``, plain steps (bench/plain_step.py, ``Interleaved``) of one minibatch's shape run after each PPO
update (rl_training.py calls ``rollout`` then ``update``), outside the engine's timers (up to ``PLAIN_PER_UPDATE``
per dtype). The script itself runs as ``__main__`` exactly as a user starts it.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

PLAIN_PER_UPDATE = 2  # plain steps per dtype after each PPO step: enough for a rate, half a 4-minibatch update


def ppo_update_positions(rows: int, width: int, epochs: int) -> int:
    """Token positions one PPO update runs forward and backward: every epoch passes each of the rollout's ``rows``
    sequences (prompt + response, ``width`` wide with padding) through the policy once. Early stopping (off in the
    benchmark) would cut epochs short; the caller checks ``ppo/early_stopped``."""
    if min(rows, width, epochs) < 1:
        raise ValueError("rows, width and epochs must be positive")
    return rows * width * epochs


def main() -> None:
    record_path, *rest = sys.argv[1:]
    spec = None
    if rest[0] == "--plain":
        spec, rest = json.loads(rest[1]), rest[2:]
    script, *args = rest
    sys.path[0] = str(Path(script).resolve().parent)  # as `python script.py` would have it (and rlhf importable)
    try:  # where the engine lives after the redesign of rlhf/ into subpackages, and before it
        from rlhf.ppo.engine import PPOEngine
    except ImportError:
        from rlhf.ppo_engine import PPOEngine

    plain = None
    if spec is not None:
        sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
        from bench.plain_step import Interleaved

        plain = Interleaved(spec, spec.pop("dtypes"))
    updates: list[dict] = []
    original_update = PPOEngine.update

    def update(self, ro, *rest, **kw):
        rows, width = ro.input_ids.shape
        last = {
            "rows": rows,
            "width": width,
            "epochs": self.config.ppo_epochs,
            "mini_batch_size": self.config.mini_batch_size,
            "response_width": width - ro.prompt_width,
            "pads": int((ro.attention_mask == 0).sum()),
        }
        updates.append(last)
        out = original_update(self, ro, *rest, **kw)  # its timers (update, total) are closed when it returns
        if plain is not None:
            minibatches = last["rows"] // last["mini_batch_size"] * last["epochs"]
            plain.after(last["mini_batch_size"], last["width"], repeats=min(PLAIN_PER_UPDATE, minibatches))
        return out

    PPOEngine.update = update
    sys.argv = [script, *args]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    record = {"updates": updates, **({"plain": plain.record()} if plain is not None else {})}
    Path(record_path).write_text(json.dumps(record), encoding="utf-8")
    sys.exit(code)


if __name__ == "__main__":
    main()
