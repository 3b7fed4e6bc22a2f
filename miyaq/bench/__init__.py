"""``miyaq bench``: a built-in load generator, in the spirit of redis-benchmark.

See :mod:`miyaq.bench.runner` for what is measured and what each time means.
"""
