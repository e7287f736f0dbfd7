"""The GA strategy with a cheap synthetic fitness, driven by the study's runner loop: budget,
elitism, cache, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.config import GAConfig, parse_config
from pipeline.evaluation import FunctionEvaluator
from pipeline.operators import REGISTRIES, bind_operator
from pipeline.search.ga import GeneticSearch, Member, breed, elite_indices, population_diversity, survivor_indices
from pipeline.space import SearchSpace, genome_hash
from pipeline.study.runner import run_strategy

from tests.conftest import tiny_params


def make_space() -> SearchSpace:
    return SearchSpace.from_config(parse_config(tiny_params()).space)


def synthetic_fitness(genome: dict) -> float:
    """Peaks at learning_rate 0.03, momentum 0.9: smooth enough for a GA to climb."""
    return 1.0 - abs(math.log10(genome["learning_rate"] / 0.03)) / 3 - abs(genome["momentum"] - 0.9) / 2


class RecordingEvaluator(FunctionEvaluator):
    """Scores with ``fitness`` (``-inf``: failed) and keeps every batch of proposals it trained,
    with its generation: ``calls`` is ``[(generation, [Proposal, ...]), ...]``."""

    def __init__(self, fail_hashes=(), fitness=None):
        fitness = fitness or synthetic_fitness
        super().__init__(lambda g: -math.inf if genome_hash(g) in self.fail_hashes else fitness(g))
        self.calls: list[tuple[int, list]] = []
        self.fail_hashes = set(fail_hashes)

    def evaluate(self, proposals, on_start=None):
        self.calls.append((proposals[0].tags["generation"], list(proposals)))
        return super().evaluate(proposals, on_start)

    @property
    def trained(self) -> list[dict]:
        return [c.genome for _, cs in self.calls for c in cs]


def drive(search: GeneticSearch, evaluator) -> object:
    """Run the GA to its end through the runner loop; its outcome (generations, stop reason)."""
    run_strategy(search, evaluator, search.budget)
    return search.outcome


def run(seed=0, budget=20, **ga_overrides):
    config = GAConfig(**{"population_size": 6, "elites": 1, **ga_overrides})
    evaluator = RecordingEvaluator()
    outcome = drive(GeneticSearch(make_space(), config, budget=budget, seed=seed), evaluator)
    return outcome, evaluator


def test_budget_is_spent_exactly():
    outcome, evaluator = run(budget=20)
    assert outcome.trained == len(evaluator.trained) == 20
    assert "budget" in outcome.stop_reason
    # 6 initial, then 5 children per generation: 6 + 5 + 5 + 4 (truncated to the budget).
    assert [g.trained for g in outcome.generations] == [6, 5, 5, 4]


def test_no_genome_is_trained_twice():
    outcome, evaluator = run(budget=30)
    hashes = [genome_hash(g) for g in evaluator.trained]
    assert len(hashes) == len(set(hashes))


def test_elites_carried_unchanged_and_not_retrained():
    outcome, evaluator = run(budget=20, elites=2)
    for previous, current in zip(outcome.generations, outcome.generations[1:]):
        expected = [previous.members[i].genome_hash for i in elite_indices(previous.fitness, 2)]
        elites = [m for m in current.members if m.origin == "elite"]
        assert [m.genome_hash for m in elites] == expected
        trained_now = {genome_hash(c.genome) for gen, cs in evaluator.calls if gen == current.number for c in cs}
        assert not trained_now & set(expected)


def test_best_fitness_never_drops_with_elitism():
    outcome, _ = run(budget=40)
    bests = [g.fitness.max() for g in outcome.generations]
    assert all(b2 >= b1 for b1, b2 in zip(bests, bests[1:]))


def test_same_seed_same_genomes_other_seed_others():
    _, first = run(seed=11)
    _, again = run(seed=11)
    _, other = run(seed=12)
    assert first.trained == again.trained
    assert first.trained != other.trained


def test_children_record_their_parents():
    outcome, evaluator = run(budget=12)
    previous_hashes = {m.genome_hash for m in outcome.generations[0].members}
    for generation, candidates in evaluator.calls[1:2]:
        for candidate in candidates:
            assert len(candidate.parents) == 2
            assert set(candidate.parents) <= previous_hashes


def test_cached_genomes_are_not_trained_and_not_charged():
    # A one-gene-value space: every child is a clone of an evaluated genome.
    params = tiny_params()
    params["space"]["genes"] = {
        "learning_rate": {"type": "choice", "values": [0.01, 0.1]},
        "momentum": {"type": "choice", "values": [0.9]},
        "weight_decay": {"type": "choice", "values": [0.0]},
        "batch_size": {"type": "choice", "values": [32]},
        "epochs": {"type": "choice", "values": [1]},
    }
    space = SearchSpace.from_config(parse_config(params).space)
    evaluator = RecordingEvaluator()
    outcome = drive(GeneticSearch(space, GAConfig(population_size=4, elites=1), budget=10, seed=0), evaluator)
    assert len(evaluator.trained) == 2  # only two distinct genomes exist
    assert "converged" in outcome.stop_reason
    assert sum(g.cache_hits for g in outcome.generations) > 0


def test_failed_individuals_rank_last_and_search_goes_on():
    space = make_space()
    first = GeneticSearch(space, GAConfig(population_size=6, elites=1), budget=6, seed=3)
    doomed = {genome_hash(first.space.sample(np.random.default_rng(3)))}  # the first initial genome
    evaluator = RecordingEvaluator(fail_hashes=doomed)
    outcome = drive(GeneticSearch(space, GAConfig(population_size=6, elites=1), budget=16, seed=3), evaluator)
    assert outcome.trained == 16
    generation0 = outcome.generations[0]
    failed = [m for m in generation0.members if m.genome_hash in doomed]
    assert failed and failed[0].fitness == -math.inf
    assert generation0.summary()["failed"] == 1
    elite = [m for m in outcome.generations[1].members if m.origin == "elite"][0]
    assert elite.genome_hash not in doomed


@pytest.mark.parametrize("selection", sorted(REGISTRIES["selection"]))
@pytest.mark.parametrize("crossover", sorted(REGISTRIES["crossover"]))
@pytest.mark.parametrize("mutation", sorted(REGISTRIES["mutation"]))
def test_every_operator_combination_runs_a_tiny_ga(selection, crossover, mutation):
    outcome, evaluator = run(
        budget=12,
        selection={"name": selection},
        crossover={"name": crossover},
        mutation={"name": mutation},
    )
    assert outcome.trained == 12
    space = make_space()
    assert all(space.contains(g) for g in evaluator.trained)


def test_breed_uses_selected_pairs():
    space = make_space()
    rng = np.random.default_rng(0)
    from pipeline.search.ga import Member

    members = [Member(space.sample(rng), f"h{i}", float(i), None, "initial") for i in range(4)]
    children = breed(
        members, 5, space, np.random.default_rng(1),
        select=bind_operator("selection", "truncation", {"fraction": 0.5}),
        crossover=bind_operator("crossover", "uniform", {}),
        mutate=bind_operator("mutation", "resample", {"rate": 0.0}),
    )  # fmt: skip
    assert len(children) == 5
    for child, (a, b) in children:
        assert {a, b} == {2, 3}  # the top half by fitness
        assert all(child[k] in (members[a].genome[k], members[b].genome[k]) for k in child)


def test_diversity_is_zero_for_clones_and_positive_otherwise():
    space = make_space()
    genome = space.sample(np.random.default_rng(0))
    assert population_diversity([genome, dict(genome)], space) == 0.0
    others = [space.sample(np.random.default_rng(s)) for s in range(5)]
    assert population_diversity(others, space) > 0.05


# ----------------------------------------------------------------------------------------------------------------------
# crossover probability, survival, immigrants, termination


def test_crossover_probability_zero_gives_mutated_copies_of_the_first_parent():
    space = make_space()
    members = [Member(space.sample(np.random.default_rng(i)), f"h{i}", float(i), None, "initial") for i in range(4)]
    children = breed(
        members, 6, space, np.random.default_rng(1),
        select=bind_operator("selection", "rank", {}),
        crossover=bind_operator("crossover", "uniform", {}),
        mutate=bind_operator("mutation", "resample", {"rate": 0.0}),
        crossover_probability=0.0,
    )  # fmt: skip
    assert all(child == members[a].genome for child, (a, _) in children)


def test_crossover_probability_is_the_share_of_crossed_children():
    space = make_space()
    members = [Member(space.sample(np.random.default_rng(i)), f"h{i}", 1.0, None, "initial") for i in range(2)]
    children = breed(
        members, 400, space, np.random.default_rng(2),
        select=bind_operator("selection", "rank", {}),
        crossover=bind_operator("crossover", "uniform", {}),
        mutate=bind_operator("mutation", "resample", {"rate": 0.0}),
        crossover_probability=0.3,
    )  # fmt: skip
    copies = sum(child in (members[0].genome, members[1].genome) for child, _ in children)
    # A crossed child equals a parent only when every swap coin falls one way (2 x 0.5^5).
    assert 0.62 < copies / len(children) < 0.78


def test_survivor_indices_skip_elites_and_are_reproducible():
    fitness = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    for seed in range(20):
        picked = survivor_indices(fitness, 2, 3, np.random.default_rng(seed))
        assert len(set(picked)) == 3 and not {1, 4} & set(picked.tolist())
        assert picked.tolist() == sorted(picked.tolist())
        assert np.array_equal(picked, survivor_indices(fitness, 2, 3, np.random.default_rng(seed)))
    assert survivor_indices(fitness, 5, 3, np.random.default_rng(0)).tolist() == [0]
    assert survivor_indices(fitness, 1, 0, np.random.default_rng(0)).size == 0


def test_random_survivors_are_carried_unchanged_and_not_retrained():
    outcome, evaluator = run(budget=30, population_size=6, elites=1, survival={"fraction": 0.4})
    for previous, current in zip(outcome.generations, outcome.generations[1:]):
        survivors = [m for m in current.members if m.origin == "survivor"]
        assert len(survivors) == 2  # round(0.4 * (6 - 1))
        previous_hashes = [m.genome_hash for m in previous.members]
        carried = [m.genome_hash for m in current.members if m.origin in ("elite", "survivor")]
        # drawn without replacement from the non-elite places: no place is carried twice
        for hash_ in set(carried):
            assert carried.count(hash_) <= previous_hashes.count(hash_)
        trained_now = {genome_hash(c.genome) for gen, cs in evaluator.calls if gen == current.number for c in cs}
        assert not trained_now & {m.genome_hash for m in survivors}
        assert current.trained <= 3


def test_immigrants_are_fresh_random_genomes_without_parents():
    outcome, evaluator = run(budget=24, population_size=6, elites=1, survival={"immigrants": 2})
    for generation, candidates in evaluator.calls[1:]:
        immigrants = [c for c in candidates if c.tags["origin"] == "immigrant"]
        assert len(immigrants) == 2 and all(c.parents == () for c in immigrants)
        assert all(len(c.parents) == 2 for c in candidates if c.tags["origin"] == "child")


def test_termination_after_n_generations():
    outcome, _ = run(budget=100, termination={"generations": 3})
    assert len(outcome.generations) == 3 and outcome.stop_reason == "3 generations run"


def test_termination_when_target_fitness_reached():
    outcome, evaluator = run(budget=200, termination={"target_fitness": 0.8})
    assert outcome.best >= 0.8 and "target fitness 0.8 reached" in outcome.stop_reason
    assert outcome.trained < 200
    # it stopped at the first generation that reached the target
    assert all(g.best < 0.8 for g in outcome.generations[:-1])


def test_termination_on_stagnation():
    outcome, _ = run(budget=500, termination={"stagnation": 2})
    assert outcome.stop_reason == "stagnation: no better best in 2 generations"
    bests = [g.best for g in outcome.generations]
    last_improvement = max(i for i in range(len(bests)) if i == 0 or bests[i] > bests[i - 1])
    assert len(bests) - 1 - last_improvement == 2
    assert all(later == bests[-1] for later in bests[last_improvement:])


def test_termination_on_wall_clock_uses_the_given_clock():
    ticks = iter(range(1000))
    config = GAConfig(population_size=6, elites=1, termination={"wall_clock_seconds": 3})
    outcome = drive(
        GeneticSearch(make_space(), config, budget=500, seed=0, clock=lambda: next(ticks)), RecordingEvaluator()
    )
    # the clock reads 0, 1, 2, 3 before generations 1, 2, 3, 4: the fourth reading stops it
    assert len(outcome.generations) == 4 and outcome.stop_reason == "wall-clock budget of 3 s spent"


def test_adaptive_mutation_rate_is_recorded_per_generation():
    outcome, _ = run(budget=40, mutation={"name": "adaptive", "rate": 0.1, "max_rate": 0.9, "target_diversity": 0.5})
    rates = [g.mutation_rate for g in outcome.generations]
    assert rates[0] is None
    for previous, current in zip(outcome.generations, outcome.generations[1:]):
        expected = 0.1 + 0.8 * max(0.0, 1 - previous.diversity / 0.5)
        assert current.mutation_rate == pytest.approx(expected)
        assert current.summary()["mutation_rate"] == current.mutation_rate


def test_rejected_children_are_recorded_and_replaced():
    space = make_space()

    class PickySpace:
        """The hyperparameter space, but genomes with momentum > 0.5 cannot be trained."""

        def sample(self, rng):
            while (genome := space.sample(rng))["momentum"] > 0.5:
                pass
            return genome

        def repair(self, genome):
            if genome["momentum"] > 0.5:
                raise ValueError(f"momentum {genome['momentum']:.2f} too high")
            return genome, []

        def __getattr__(self, name):
            return getattr(space, name)

    search = GeneticSearch(space, GAConfig(population_size=6, elites=1, mutation={"name": "resample", "rate": 0.5}),
                           budget=30, seed=1)  # fmt: skip
    search.space = PickySpace()
    evaluator = RecordingEvaluator()
    outcome = drive(search, evaluator)
    assert outcome.trained == 30
    assert all(g["momentum"] <= 0.5 for g in evaluator.trained)
    reasons = [r.reason for g in outcome.generations for r in g.rejected]
    assert reasons and all("too high" in r for r in reasons)
    assert all(len(g.members) == 6 for g in outcome.generations[1:-1])


# ----------------------------------------------------------------------------------------------------------------------
# architecture genomes in the loop: every operator, phased growth

from pipeline.space.architecture import ArchitectureSpace  # noqa: E402
from pipeline.config import PhasesConfig  # noqa: E402


def make_architecture_space(image_shape=(1, 28, 28), **architecture) -> ArchitectureSpace:
    params = tiny_params()
    params["space"]["kind"] = "architecture"
    params["space"]["architecture"] = {"conv_layers": {"min": 1, "max": 3}, "fc_layers": {"min": 1, "max": 2},
                                       **architecture}  # fmt: skip
    return ArchitectureSpace.from_config(parse_config(params).space, image_shape)


def architecture_fitness(genome: dict) -> float:
    """Prefers three conv layers of 32 filters: a target a GA over layer lists can climb."""
    conv = genome["conv"]
    return synthetic_fitness(genome) - abs(len(conv) - 3) / 10 - sum(abs(g["filters"] - 32) for g in conv) / 1000


class ArchitectureEvaluator(RecordingEvaluator):
    def __init__(self):
        super().__init__(fitness=architecture_fitness)


@pytest.mark.parametrize("layers", ["mix", "cut_splice"])
@pytest.mark.parametrize("crossover", sorted(REGISTRIES["crossover"]))
@pytest.mark.parametrize("mutation", sorted(REGISTRIES["mutation"]))
def test_every_operator_runs_a_tiny_architecture_ga(crossover, mutation, layers):
    space = make_architecture_space(image_shape=(1, 8, 8))
    config = GAConfig(population_size=5, elites=1, crossover={"name": crossover, "layers": layers},
                      mutation={"name": mutation})  # fmt: skip
    evaluator = ArchitectureEvaluator()
    outcome = drive(GeneticSearch(space, config, budget=14, seed=4), evaluator)
    assert outcome.trained == 14
    assert all(space.contains(g) for g in evaluator.trained)  # every trained genome fits 8x8 images


def test_architecture_ga_is_reproducible_and_reaches_better_genomes():
    space = make_architecture_space()
    runs = []
    for seed in (5, 5, 6):
        evaluator = ArchitectureEvaluator()
        outcome = drive(GeneticSearch(space, GAConfig(population_size=6, elites=1), budget=40, seed=seed), evaluator)
        runs.append((evaluator.trained, outcome))
    assert runs[0][0] == runs[1][0] and runs[0][0] != runs[2][0]
    outcome = runs[0][1]
    assert outcome.generations[-1].best > outcome.generations[0].best


def test_phased_growth_keeps_the_best_conv_genes_and_appends_new_ones():
    space = make_architecture_space(conv_layers={"min": 1, "max": 2})
    phases = PhasesConfig(count=3, new_conv_layers=1, freeze_transferred=True)
    evaluator = ArchitectureEvaluator()
    search = GeneticSearch(space, GAConfig(population_size=4, elites=1), budget=24, seed=2, phases=phases)
    outcome = drive(search, evaluator)
    assert outcome.trained == 24
    assert len(outcome.phase_reasons) == 3 and "phase 0" in outcome.phase_reasons[0]
    by_phase = {}
    for generation, candidates in evaluator.calls:
        phase = next(g.phase for g in outcome.generations if g.number == generation)
        by_phase.setdefault(phase, []).extend(candidates)
    assert sum(len(c) for c in by_phase.values()) == 24 and [len(by_phase[p]) for p in range(3)] == [8, 8, 8]
    for phase in (1, 2):
        earlier = [c.genome for p in range(phase) for c in by_phase[p]]
        best = max(earlier, key=architecture_fitness)
        for candidate in by_phase[phase]:
            conv = candidate.genome["conv"]
            assert conv[: len(best["conv"])] == best["conv"]
            assert len(conv) == len(best["conv"]) + 1  # new_conv_layers = 1
            assert candidate.freeze_conv == len(best["conv"])
            if candidate.tags["origin"] == "initial":
                assert list(candidate.parents) == [genome_hash(best)]


def test_phases_are_ignored_for_a_hyperparameter_space():
    search = GeneticSearch(make_space(), GAConfig(population_size=6, elites=1), budget=12, seed=0,
                           phases=PhasesConfig(count=3))  # fmt: skip
    outcome = drive(search, RecordingEvaluator())
    assert outcome.trained == 12 and len(outcome.phase_reasons) == 1


# ----------------------------------------------------------------------------------------------------------------------
# the ask/tell protocol, and operators without a per-gene rate


def test_ask_repeats_its_batch_until_told_and_ends_with_a_reason():
    search = GeneticSearch(make_space(), GAConfig(population_size=4, elites=1), budget=4, seed=0)
    with pytest.raises(RuntimeError, match="ask"):
        search.tell([])
    first = search.ask()
    assert search.ask() is first and len(first.proposals) == 4 and first.group.number == 0
    assert first.max_trainings == 4
    evaluator = FunctionEvaluator(synthetic_fitness)
    from pipeline.evaluation import Scored

    scored = [Scored(record, True) for _, record in evaluator.evaluate(first.proposals)]
    report = search.tell(scored)
    assert report.metrics["trained"] == 4 and report.stage_metrics["generation_best"] == max(
        s.record.fitness for s in scored
    )
    assert search.ask() is None and search.stop_reason == "budget of 4 evaluations spent"


def test_a_mutation_without_a_rate_setting_runs_on_both_genome_kinds(monkeypatch):
    from pipeline.operators import mutation as mutation_module
    from pipeline.operators.settings import declare

    @declare()
    def mutate_swap_momentum(genome, space, rng, diversity=None):
        """Redraws the momentum only: a mutation with no settings and no per-gene rate."""
        return {**genome, "momentum": space["momentum"].sample(rng)}

    monkeypatch.setitem(mutation_module.MUTATIONS, "swap_momentum", mutate_swap_momentum)
    outcome, evaluator = run(budget=14, mutation={"name": "swap_momentum"})
    assert outcome.trained == 14 and all(g.mutation_rate is None for g in outcome.generations)
    space = make_architecture_space(image_shape=(1, 8, 8))
    search = GeneticSearch(
        space, GAConfig(population_size=4, elites=1, mutation={"name": "swap_momentum"}), budget=10, seed=1
    )
    outcome = drive(search, ArchitectureEvaluator())
    assert outcome.trained == 10
