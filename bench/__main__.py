"""``python -m bench`` (what ``make bench`` runs): every benchmark in turn, then BENCHMARKS.md."""

from __future__ import annotations

import time

from bench import efficiency, ppo_vs_trl, report, scaling


def main() -> None:
    start = time.perf_counter()
    ppo_vs_trl.main([])
    scaling.main([])
    efficiency.main([])
    report.main(["--seconds", str(time.perf_counter() - start)])


if __name__ == "__main__":
    main()
