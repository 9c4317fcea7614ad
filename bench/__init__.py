"""`make bench`: throughput, CPU, memory and stats benchmarks of evolve against a fake endpoint and its peers.

Run from the repository root as ``python -m bench`` (``BENCH_QUICK=1`` for a ~2-minute smoke run). Scratch data
and the peers' virtual environments live in ``.bench/`` (git-ignored); results go to ``bench/results.json``.
"""
