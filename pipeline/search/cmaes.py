"""CMA-ES: Optuna's ``CmaEsSampler`` as a search method, the whole of it in this file.

The covariance matrix adaptation evolution strategy adapts a Gaussian over the continuous and
integer genes (learning rate on its log scale, momentum, weight decay, epochs); Optuna samples what
CMA-ES does not model (a choice gene such as ``batch_size``, an architecture's per-layer slots,
which not every trial has) with a seeded random sampler. Ask/tell, the budget, failed and repaired
genomes and early-stopped trials are ``OptunaSearch``'s, as for TPE. It needs the ``cmaes`` package.

On by name: ``study.methods`` in ``params.yaml`` (for example ``[ga, tpe, cmaes]``), or ``null`` for
every registered method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from pipeline.search.protocol import Method
from pipeline.search.tpe import OptunaSearch
from pipeline.space import ArchitectureSpace, SearchSpace

if TYPE_CHECKING:
    from pipeline.config.sections import StudyConfig


class CmaEsSearch(OptunaSearch):
    method = "cmaes"


def build(config: StudyConfig, space: SearchSpace | ArchitectureSpace) -> CmaEsSearch:
    sampler = optuna.samplers.CmaEsSampler(
        seed=config.seed,
        # The genes CMA-ES leaves to it are drawn from the same seed: same seed, same genomes.
        independent_sampler=optuna.samplers.RandomSampler(seed=config.seed),
        warn_independent_sampling=False,  # a choice gene is sampled so by design, not by accident
    )
    return CmaEsSearch(space, config.budget.evaluations, config.seed, sampler)


METHOD = Method("cmaes", "CMA-ES (Optuna)", build)
