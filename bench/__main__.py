"""``python -m bench`` (what ``make bench`` runs): every benchmark in turn, then BENCHMARKS.md.

``BENCH_SCALE=small`` keeps to the tiny model (the PPO-vs-TRL table, scaling, the stages' efficiency, generation):
minutes, for a quick check or CI. The default adds the SmolLM2-135M-sized comparison with TRL (fp32, and bf16 mixed
precision where the CPU has native bf16), the update's profile and memory breakdown, and generation at that size.
"""

from __future__ import annotations

import os
import time

from bench import efficiency, generation, ppo_vs_trl, profile_update, report, scaling


def main() -> None:
    start = time.perf_counter()
    small = os.environ.get("BENCH_SCALE", "full") == "small"
    ppo_vs_trl.main([])
    if not small:
        from rlhf.runtime.precision import native_bf16

        ppo_vs_trl.main(["--dims", "smollm2", "--precisions", "fp32,bf16" if native_bf16() else "fp32"])
        profile_update.main(["--dims", "smollm2"])
    generation.main(["--dims", "tiny", "--lora_layers", "0-3"] if small else [])
    scaling.main([])
    efficiency.main([])
    report.main(["--seconds", str(time.perf_counter() - start)])


if __name__ == "__main__":
    main()
