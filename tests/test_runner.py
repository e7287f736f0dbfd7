"""The runner loop and its checkpoint: any strategy of the registry runs through one loop with the
duplicate-genome cache, budget accounting, checkpoint, resume and tracking; a new method needs no
change to the library (the toy strategy below lives in this file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import parse_config
from pipeline.evaluation import EvaluationRecord, FunctionEvaluator, Proposal, Scored
from pipeline.search.protocol import Batch, Group, GroupReport
from pipeline.search.registry import Method, method_names, register, unregister
from pipeline.space import genome_hash
from pipeline.study.checkpoint import Checkpoint
from pipeline.study.runner import CACHED, DROPPED, TRAIN, SearchRunner, plan_batch, run_strategy
from pipeline.study.search_stage import run_search_stage
from pipeline.tracking.store import PARENT_TAG, tracking_uri

from tests.conftest import tiny_params


class ToyRandomStrategy:
    """Random proposals from the space, two per batch, each batch its own group; proposes one
    genome twice to exercise the cache. Stops after ``batches`` batches."""

    def __init__(self, space, seed: int, batches: int = 3) -> None:
        self.space, self.rng, self.batches = space, np.random.default_rng(seed), batches
        self.told: list[list[Scored | None]] = []
        self.stop_reason = ""
        self._pending: Batch | None = None

    def ask(self) -> Batch | None:
        if len(self.told) == self.batches:
            self.stop_reason = f"{self.batches} batches proposed"
            return None
        if self._pending is None:
            number = len(self.told)
            genomes = [self.space.sample(self.rng), self.space.sample(self.rng)]
            if number == 1:
                genomes.append(self.told[0][0].record.genome)  # seen before: scored from the cache
            proposals = tuple(
                Proposal(g, f"toy-{number}-{i}", {"method": "toy", "batch": number}) for i, g in enumerate(genomes)
            )
            self._pending = Batch(
                proposals, Group(number, f"batch-{number}", {"size": len(genomes)}, {"method": "toy"})
            )
        return self._pending

    def tell(self, scored):
        self.told.append(list(scored))
        self._pending = None
        best = max((s.record.fitness for s in scored if s is not None), default=-math.inf)
        return GroupReport({"best": best}, {"note": "toy"}, {"batch_best": best})

    def stage_params(self):
        return {"batches": self.batches}

    def summary(self):
        return {"batches_told": len(self.told)}

    def history(self):
        return [{"batch": i, "new": [s.new for s in told if s is not None]} for i, told in enumerate(self.told)]


@pytest.fixture
def toy_method():
    register(Method("toy", "Toy random", lambda config, space: ToyRandomStrategy(space, config.seed)))
    yield "toy"
    unregister("toy")


def toy_config():
    params = tiny_params()
    params["budget"]["evaluations"] = 5
    return parse_config(params)


@pytest.mark.slow
def test_a_registered_toy_strategy_runs_with_checkpoint_resume_and_tracking(
    toy_method, tmp_path, monkeypatch, prepared_digits
):
    from tests.test_reliability import CountingTrainer

    assert "toy" in method_names()
    config = toy_config()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "reference"))
    reference = run_search_stage(
        "toy", config, prepared_digits.folder, tmp_path / "reference" / "r", tmp_path / "reference" / "c"
    )[0]
    # 2 + 2 (+1 cached) + the budget's last training of the third batch: 5 trainings, one cache hit
    assert reference["evaluations"] == 5 and reference["batches_told"] == 3
    history = json.loads((tmp_path / "reference" / "r" / "toy_search" / "seed-42_history.json").read_text())
    assert history["generations"] == [{"batch": 0, "new": [True, True]}, {"batch": 1, "new": [True, True, False]},
                                      {"batch": 2, "new": [True]}]  # fmt: skip

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "resumed"))
    results, checkpoints = tmp_path / "resumed" / "r", tmp_path / "resumed" / "c"
    CountingTrainer(monkeypatch, stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_search_stage("toy", config, prepared_digits.folder, results, checkpoints)
    counter = CountingTrainer(monkeypatch)
    (resumed,) = run_search_stage("toy", config, prepared_digits.folder, results, checkpoints)
    assert counter.calls == 5 - 3  # the three checkpointed evaluations are not trained again
    keep = ("evaluations", "failed", "best_val_acc", "best_genome", "evaluations_to_best", "batches_told")
    assert {k: resumed[k] for k in keep} == {k: reference[k] for k in keep}

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    stage = [r for r in runs if r.data.tags.get("stage") == "toy_search"]
    groups = [r for r in runs if r.data.tags.get(PARENT_TAG) == stage[0].info.run_id]
    individuals = [r for r in runs if "genome_hash" in r.data.tags]
    assert len(stage) == 1 and stage[0].info.status == "FINISHED" and stage[0].data.params["batches"] == "3"
    assert sorted(g.info.run_name for g in groups) == ["batch-0", "batch-1", "batch-2"]
    assert all(g.info.status == "FINISHED" and g.data.tags["note"] == "toy" for g in groups)
    group_ids = {g.info.run_id for g in groups}
    assert all(r.data.tags[PARENT_TAG] in group_ids for r in individuals)
    finished = sorted(r.data.tags["genome_hash"] for r in individuals if r.info.status == "FINISHED")
    assert len(finished) == len(set(finished)) == 5  # each genome FINISHED once, the killed one retrained
    assert [r.info.status for r in individuals].count("KILLED") == 1
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_plan_trains_new_genomes_within_the_budget_and_caches_repeats():
    a, b, c = ({"x": i} for i in range(3))
    batch = Batch(tuple(Proposal(g, str(i)) for i, g in enumerate([a, b, a, c])))
    assert plan_batch(batch, set(), 10) == [TRAIN, TRAIN, CACHED, TRAIN]
    assert plan_batch(batch, {genome_hash(b)}, 10) == [TRAIN, CACHED, CACHED, TRAIN]
    assert plan_batch(batch, set(), 2) == [TRAIN, TRAIN, CACHED, DROPPED]
    capped = Batch(batch.proposals, max_trainings=1)
    assert plan_batch(capped, set(), 10) == [TRAIN, DROPPED, CACHED, DROPPED]


class ReversedEvaluator(FunctionEvaluator):
    """Finishes a batch last to first, as a pool of workers might."""

    def evaluate(self, proposals, on_start=None):
        return reversed(list(super().evaluate(proposals, on_start)))


def test_records_are_committed_in_proposal_order_whatever_order_they_finish(tmp_path):
    from pipeline.search.random import RandomSearch
    from pipeline.space import SearchSpace

    space = SearchSpace.from_config(parse_config(tiny_params()).space)
    fitness = lambda genome: genome["momentum"]  # noqa: E731
    in_order = run_strategy(RandomSearch(space, 6, seed=1), FunctionEvaluator(fitness), 6)
    checkpoint, _ = Checkpoint.open(tmp_path / "c.jsonl", "f")
    reversed_ = SearchRunner(RandomSearch(space, 6, seed=1), ReversedEvaluator(fitness), 6, checkpoint).run()
    assert [r.genome for r in reversed_] == [r.genome for r in in_order]
    assert [r.index for r in reversed_] == list(range(6))
    reopened, _ = Checkpoint.open(tmp_path / "c.jsonl", "f")
    assert [r.genome_hash for r in reopened.records] == [r.genome_hash for r in in_order]


# ----------------------------------------------------------------------------------------------------------------------
# the append-only checkpoint


def record(i: int) -> EvaluationRecord:
    genome = {"x": i}
    return EvaluationRecord(
        genome, genome_hash(genome), i, "finished", 0.5, 1.0, 1.0, 0.1, [], index=i, elapsed_seconds=i
    )


def filled(path: Path, n: int = 3) -> Checkpoint:
    checkpoint, message = Checkpoint.open(path, "print")
    assert message == "no checkpoint: starting afresh"
    checkpoint.set_stage_run("stage-run")
    checkpoint.set_group_run(0, "group-run")
    for i in range(n):
        checkpoint.append(record(i))
    return checkpoint


def test_checkpoint_appends_and_reads_back_what_it_wrote(tmp_path):
    path = tmp_path / "c.jsonl"
    filled(path, 2)
    before = path.read_bytes()
    checkpoint, message = Checkpoint.open(path, "print")
    assert message.startswith(f"resuming from {path}: 2 finished evaluations reused")
    checkpoint.append(record(2))
    assert path.read_bytes().startswith(before)  # appended, never rewritten
    reopened, _ = Checkpoint.open(path, "print")
    assert reopened.records == [record(0), record(1), record(2)]
    assert reopened.stage_run_id == "stage-run" and reopened.group_runs == {0: "group-run"}


def test_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "c.jsonl"
    filled(path, 3)
    path.write_bytes(path.read_bytes()[:-25])  # a kill in the middle of writing the last record
    checkpoint, message = Checkpoint.open(path, "print")
    assert len(checkpoint.records) == 2 and "2 finished evaluations reused" in message
    checkpoint.append(record(2))
    assert Checkpoint.open(path, "print")[0].records == [record(0), record(1), record(2)]


@pytest.mark.parametrize(
    "garbage", [b"not json\n", b"[]\n", b"42\n", b'{"kind": "evaluation", "record": 7}\n', b"\xff\xfe\n"]
)
def test_a_broken_line_keeps_the_valid_prefix_and_says_so(tmp_path, garbage):
    path = tmp_path / "c.jsonl"
    filled(path, 2)
    with open(path, "ab") as stream:
        stream.write(garbage)
    checkpoint, message = Checkpoint.open(path, "print")
    assert len(checkpoint.records) == 2 and "kept the valid part: line 6" in message
    checkpoint.append(record(2))  # continues right after the valid part
    assert Checkpoint.open(path, "print")[0].records == [record(0), record(1), record(2)]


@pytest.mark.parametrize("content", [b"", b"null\n", b'"x"\n', b"\x00\x01binary"])
def test_an_unreadable_checkpoint_starts_afresh(tmp_path, content):
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    checkpoint, message = Checkpoint.open(path, "print")
    assert checkpoint.records == [] and "starting afresh" in message
    assert Checkpoint.open(path, "print")[1].startswith("resuming")  # a valid header was written


def test_other_fingerprint_or_a_completed_search_starts_afresh(tmp_path):
    path = tmp_path / "c.jsonl"
    filled(path).mark_complete()
    checkpoint, message = Checkpoint.open(path, "print")
    assert checkpoint.records == [] and "completed search" in message and "training afresh" in message
    filled(tmp_path / "d.jsonl")
    checkpoint, message = Checkpoint.open(tmp_path / "d.jsonl", "other")
    assert checkpoint.records == [] and "other params, data or code" in message


@pytest.mark.slow
def test_a_finished_repeat_is_reused_until_its_results_are_deleted(
    tmp_path, monkeypatch, tiny_config, prepared_digits, capsys
):
    from tests.test_reliability import CountingTrainer

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (first,) = run_search_stage("random", tiny_config, prepared_digits.folder, tmp_path / "r", tmp_path / "c")
    counter = CountingTrainer(monkeypatch)
    (again,) = run_search_stage("random", tiny_config, prepared_digits.folder, tmp_path / "r", tmp_path / "c")
    assert "repeat 0 (seed 42): reused" in capsys.readouterr().out
    assert counter.calls == 0 and again == first  # same params, data and code: nothing trains, same runs
    (tmp_path / "c" / "random_search" / "seed-42.done.json").unlink()
    (fresh,) = run_search_stage("random", tiny_config, prepared_digits.folder, tmp_path / "r", tmp_path / "c")
    assert "completed search (the stage was forced): training afresh" in capsys.readouterr().out
    assert counter.calls == tiny_config.budget.evaluations
    assert fresh["best_val_acc"] == first["best_val_acc"] and fresh["best_run_id"] != first["best_run_id"]


@pytest.mark.slow
def test_a_changed_repeat_retrains_while_an_unchanged_one_is_reused(
    tmp_path, monkeypatch, tiny_params_dict, prepared_digits, capsys
):
    from tests.test_reliability import CountingTrainer

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    tiny_params_dict["study"] = {"repeats": 2, "seeds": [3, 4]}
    first = run_search_stage(
        "random", parse_config(tiny_params_dict), prepared_digits.folder, tmp_path / "r", tmp_path / "c"
    )
    assert [s["seed"] for s in first] == [3, 4] and first[0]["best_genome"] != first[1]["best_genome"]
    counter = CountingTrainer(monkeypatch)
    tiny_params_dict["study"] = {"repeats": 2, "seeds": [4, 5]}
    second = run_search_stage(
        "random", parse_config(tiny_params_dict), prepared_digits.folder, tmp_path / "r", tmp_path / "c"
    )
    out = capsys.readouterr().out
    assert "repeat 0 (seed 4): reused" in out and "repeat 1 (seed 5): no checkpoint" in out
    assert counter.calls == tiny_params_dict["budget"]["evaluations"]  # only seed 5 trained
    assert second[0] == first[1] | {"repeat": 0}  # seed 4's results, now repeat 0
    metrics = json.loads((tmp_path / "r" / "random_search.json").read_text())
    assert metrics["repeats"] == 2 and all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["best_val_acc_mean"] == pytest.approx((second[0]["best_val_acc"] + second[1]["best_val_acc"]) / 2)


@pytest.mark.slow
def test_a_method_left_out_of_study_methods_trains_nothing_and_is_reused_when_named_again(
    tmp_path, monkeypatch, tiny_params_dict, prepared_digits, capsys
):
    from tests.test_reliability import CountingTrainer

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    results, checkpoints = tmp_path / "r", tmp_path / "c"
    (first,) = run_search_stage("random", parse_config(tiny_params_dict), prepared_digits.folder, results, checkpoints)
    counter = CountingTrainer(monkeypatch)
    tiny_params_dict["study"]["methods"] = ["ga", "tpe"]
    assert (
        run_search_stage("random", parse_config(tiny_params_dict), prepared_digits.folder, results, checkpoints) == []
    )
    assert "[random] skipped: not in study.methods" in capsys.readouterr().out
    assert json.loads((results / "random_search.json").read_text())["skipped"] == "not in study.methods"
    assert list((results / "random_search").iterdir()) == []  # no repeat of an earlier run left behind
    assert counter.calls == 0
    tiny_params_dict["study"]["methods"] = None
    (again,) = run_search_stage("random", parse_config(tiny_params_dict), prepared_digits.folder, results, checkpoints)
    assert "repeat 0 (seed 42): reused" in capsys.readouterr().out
    assert counter.calls == 0 and again == first


def test_study_methods_keeps_the_registry_order_and_names_an_unknown_method(tiny_params_dict):
    from pipeline.errors import ConfigError
    from pipeline.search.registry import study_methods

    assert study_methods(parse_config(tiny_params_dict)) == method_names()  # null: every registered method
    tiny_params_dict["study"]["methods"] = list(reversed(method_names()[:2]))
    assert study_methods(parse_config(tiny_params_dict)) == method_names()[:2]  # the report's row order
    tiny_params_dict["study"]["methods"] = ["ga", "bayes"]
    with pytest.raises(ConfigError, match=r"study\.methods: unknown method\(s\) \['bayes'\]; registered: \['ga'"):
        study_methods(parse_config(tiny_params_dict))
