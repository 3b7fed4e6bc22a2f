"""``miyaq bench``: a built-in load generator, in the spirit of redis-benchmark.

See :mod:`miyaq.bench.runner` for what is measured and what each time means.
"""

TASK_NAME = "miyaq.bench.noop"
"""The no-op task every bench producer submits and its workers run
(:mod:`miyaq.bench.tasks`): one name for the producers, the bare client and the app."""
