"""Developer tooling for litellm-credits (local PostgreSQL clusters, demo, helpers).

Not part of the installed package: it is imported from the repository root by
the Makefile, the test suite and the benchmark.
"""
