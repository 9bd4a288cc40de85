"""The litellm-credits benchmark: ``python -m bench.run [--quick]`` (``make bench``).

See ``docs/benchmarks.md`` for the method and the latest numbers, and
``bench/results/latest.json`` for the machine-readable results.
"""
