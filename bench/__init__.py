"""Benchmarks (``make bench``): PPO against TRL 1.12, training efficiency, scaling; results go to BENCHMARKS.md."""
