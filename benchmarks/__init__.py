"""Throughput benchmarks of the SGD engines; run ``python -m benchmarks``.

See :mod:`benchmarks.runner` for the workload and the printed lines, and
``BENCHMARKS.md`` for results.
"""
