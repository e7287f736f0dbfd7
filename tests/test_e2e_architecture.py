"""End to end: ``dvc repro`` of every stage on a tiny architecture search (layers grown phase by phase,
the GA's children starting from merged parent weights), in a temporary git repo."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_params
from tests.test_e2e import STAGES, make_study_repo, ran, sh

pytestmark = pytest.mark.slow


ARCHITECTURE_SPACE = {
    "kind": "architecture",
    "genes": {**tiny_params()["space"]["genes"], "noise_level": {"type": "choice", "values": [0.0, 0.1]}},
    "architecture": {
        "conv_layers": {"min": 1, "max": 2},
        "fc_layers": {"min": 1, "max": 2},
        "conv": {"filters": [4, 8], "kernel_size": [3, 5, 7], "stride": [1, 2], "pool_size": [None, 2, 3]},
        "fc": {"units": [8, 16]},
        "phases": {"count": 2, "new_conv_layers": 1, "freeze_transferred": True},
    },
}


def test_architecture_search_with_merged_weights_runs_end_to_end(tmp_path):
    repo = make_study_repo(
        tmp_path / "arch",
        {"space": ARCHITECTURE_SPACE, "budget": {"evaluations": 8}, "study": {"methods": ["ga", "grid", "tpe"]},
         "ga": {"weights": "merge", "survival": {"fraction": 0.5, "immigrants": 0},
                "mutation": {"name": "adaptive", "rate": 0.2, "max_rate": 0.8}}},
    )  # fmt: skip
    result = sh("dvc", "repro", cwd=repo)
    assert ran(result.stdout) == STAGES
    ga = json.loads((repo / "results" / "ga_search" / "seed-42_history.json").read_text())
    records = ga["evaluations"]
    assert len(records) == 8
    assert all(isinstance(r["genome"]["conv"], list) and r["genome"]["conv"] for r in records)
    # phase 1 grows the phase-0 best: every genome of it starts with that best's conv genes
    phases = [g["phase"] for g in ga["generations"]]
    assert phases[0] == 0 and phases[-1] == 1
    first_phase1 = next(i for i, g in enumerate(ga["generations"]) if g["phase"] == 1)
    phase1_hashes = set(ga["generations"][first_phase1]["genome_hashes"])
    phase0 = [r for r in records if r["genome_hash"] not in phase1_hashes][: len(records) // 2]
    best0 = max((r for r in phase0 if r["status"] == "finished"), key=lambda r: r["val_score"])
    for record in records:
        if record["genome_hash"] in phase1_hashes:
            prefix = record["genome"]["conv"][: len(best0["genome"]["conv"])]
            assert prefix == best0["genome"]["conv"]
            assert len(record["genome"]["conv"]) == len(best0["genome"]["conv"]) + 1
            assert record["init"] == "merge"  # the grown genomes start from the best's weights
    assert (repo / "checkpoints" / "ga_search" / "seed-42-weights").is_dir()
    for method in ("grid", "tpe"):  # the baselines search architectures too (random, PBT and CMA-ES left out)
        history = json.loads((repo / "results" / f"{method}_search" / "seed-42_history.json").read_text())
        assert history["evaluations"] and all("conv" in r["genome"] for r in history["evaluations"])
    champion = json.loads((repo / "results" / "champion_details.json").read_text())
    assert "conv" in champion["champion"]["genome"]
    summary = json.loads((repo / "results" / "ga_search" / "seed-42.json").read_text())
    assert summary["operators"]["weights"] == "merge" and summary["operators"]["mutation"] == "adaptive"
