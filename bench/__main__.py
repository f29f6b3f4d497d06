"""``python -m bench`` (what ``make bench`` runs): the benchmarks of the chosen scale in turn, then BENCHMARKS.md.

``BENCH_SCALE`` picks how much runs (times on 2 CPU cores, one thread per process):

- ``default``: the tiny-model PPO-vs-TRL table, the SmolLM2-135M-sized comparison with TRL (full fine-tune, fp32,
  2 PPO steps per run), the update's profile and memory breakdown, generation at 135M and the scaling fits — under
  30 minutes;
- ``small``: the tiny model only (the PPO-vs-TRL table, generation, scaling): minutes, for a quick check;
- ``full``: the default's sections with 3 PPO steps per 135M run, its LoRA row and, where the CPU has native bf16, its
  bf16 rows, plus the stages' efficiency and precision sections (each stage against its plain step): about two hours.

Sections a scale leaves out that other runs own (efficiency, precision, learning) stay in BENCHMARKS.md as written.
"""

from __future__ import annotations

import os
import sys
import time

from bench import efficiency, generation, ppo_vs_trl, profile_update, report, scaling

SCALES = ("default", "small", "full")


def smollm2_comparison(scale: str) -> list[str]:
    """bench.ppo_vs_trl's arguments for the 135M comparison at ``scale`` (none at ``small``)."""
    if scale == "small":
        return []
    if scale == "default":
        return ["--dims", "smollm2", "--variants", "none", "--precisions", "fp32", "--steps", "2"]
    from rlhf.runtime.precision import native_bf16

    return ["--dims", "smollm2", "--variants", "none,lora", "--precisions", "fp32,bf16" if native_bf16() else "fp32"]


def main() -> None:
    scale = os.environ.get("BENCH_SCALE") or "default"
    if scale not in SCALES:
        sys.exit(f"BENCH_SCALE={scale!r}: expected one of {', '.join(SCALES)}")
    start = time.perf_counter()
    ppo_vs_trl.main([])
    if scale != "small":
        ppo_vs_trl.main(smollm2_comparison(scale))
        profile_update.main(["--dims", "smollm2"])
    generation.main(["--dims", "tiny", "--lora_layers", "0-3"] if scale == "small" else [])
    scaling.main([])
    if scale == "full":
        efficiency.main([])
    report.main(["--seconds", str(time.perf_counter() - start), "--scale", scale])


if __name__ == "__main__":
    main()
