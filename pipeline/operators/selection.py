"""Parent selection: which individuals breed.

Contract: ``select_*(fitness, n_pairs, rng, **settings) -> pairs`` where ``fitness`` has shape
``(n,)`` (higher is better, ``-inf`` for a failed individual) and ``pairs`` is an int array of shape
``(n_pairs, 2)`` indexing ``fitness``; the two parents of a pair differ whenever ``n >= 2``.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.operators.settings import Real, declare


def _ranked(fitness: np.ndarray) -> np.ndarray:
    """Indices from best to worst; ties keep their original order so results are reproducible."""
    return np.argsort(-fitness, kind="stable")


def _pairs_from_pool(pool: np.ndarray, n_pairs: int, rng: np.random.Generator, p: np.ndarray | None = None):
    pairs = np.empty((n_pairs, 2), dtype=np.int64)
    for i in range(n_pairs):
        pairs[i] = rng.choice(pool, size=2, replace=False, p=p)
    return pairs


@declare(fraction=Real(0, 1, low_open=True))
def select_truncation(
    fitness: np.ndarray, n_pairs: int, rng: np.random.Generator, *, fraction: float = 0.5
) -> np.ndarray:
    """Pairs drawn uniformly from the top ``fraction`` of the population (at least two)."""
    pool_size = min(len(fitness), max(2, math.ceil(fraction * len(fitness))))
    return _pairs_from_pool(_ranked(fitness)[:pool_size], n_pairs, rng)


@declare(size=Real(2, integer=True))
def select_tournament(fitness: np.ndarray, n_pairs: int, rng: np.random.Generator, *, size: int = 3) -> np.ndarray:
    """Each parent wins a tournament of ``size`` individuals drawn without replacement."""
    n = len(fitness)
    size = min(size, n)
    pairs = np.empty((n_pairs, 2), dtype=np.int64)
    for i in range(n_pairs):
        first = _tournament_winner(fitness, np.arange(n), size, rng)
        others = np.delete(np.arange(n), first)
        pairs[i] = first, _tournament_winner(fitness, others, min(size, len(others)), rng)
    return pairs


def _tournament_winner(fitness: np.ndarray, candidates: np.ndarray, size: int, rng: np.random.Generator) -> int:
    entrants = rng.choice(candidates, size=size, replace=False)
    return int(entrants[np.argmax(fitness[entrants])])


def select_roulette(fitness: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Fitness-proportional: probability ``fitness_i / sum(fitness)``; failed individuals get none.

    Fitness is shifted by its minimum when negative, so the rule holds for any finite fitness.
    """
    weights = np.where(np.isfinite(fitness), fitness, np.nan)
    finite = weights[~np.isnan(weights)]
    shift = min(0.0, float(finite.min())) if finite.size else 0.0
    weights = np.nan_to_num(weights - shift, nan=0.0)
    return _pairs_from_pool(np.arange(len(fitness)), n_pairs, rng, p=_probabilities(weights))


def select_rank(fitness: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Rank-proportional: the best of n has weight n, the worst weight 1."""
    weights = np.empty(len(fitness))
    weights[_ranked(fitness)] = np.arange(len(fitness), 0, -1)
    return _pairs_from_pool(np.arange(len(fitness)), n_pairs, rng, p=_probabilities(weights))


def _probabilities(weights: np.ndarray) -> np.ndarray:
    # Fewer than two positive weights cannot give two distinct parents: fall back to uniform there.
    if np.count_nonzero(weights > 0) < 2:
        weights = np.ones_like(weights)
    return weights / weights.sum()


SELECTIONS = {
    "truncation": select_truncation,
    "tournament": select_tournament,
    "roulette": select_roulette,
    "rank": select_rank,
}
