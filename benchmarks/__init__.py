"""``make bench``: what the till pipeline costs on the machine at hand, beside the raw
inference limit and two peers. Run ``python -m benchmarks --help``; see docs/performance.md."""
