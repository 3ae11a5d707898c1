"""Benchmarks, each a script run as ``python -m posereid.experiments.bench.<name>``.

``generator`` (sampling and training speed vs a naive baseline), ``augment`` (offline generation
throughput), ``evaluate`` (our evaluator vs torchreid's) and ``synthetic`` (the synthetic-people
renderer). Each writes a markdown report; the committed ones are in the repository's ``results/``.
The names other code uses are re-exported here, resolved on first access.
"""

from posereid._lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "generator": ["baseline_generate"],
    },
)
