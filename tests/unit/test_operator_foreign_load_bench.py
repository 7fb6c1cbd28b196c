"""bench/operator_foreign_load.py: its Jobs must look like another workload's, not kexp's."""

from __future__ import annotations

from bench.operator_foreign_load import foreign_jobs

from kexp.api import contract


def test_foreign_jobs_carry_no_kexp_label_and_no_owner() -> None:
    jobs = foreign_jobs(3, "shared")
    assert {j["metadata"]["namespace"] for j in jobs} == {"shared"}
    assert len({j["metadata"]["name"] for j in jobs}) == 3
    for job in jobs:
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert contract.LABEL_MANAGED_BY not in labels
            assert not any(key.startswith("kexp.io/") for key in labels)
        assert "ownerReferences" not in job["metadata"]


def test_kexp_labelled_jobs_reach_the_operator_but_name_no_experiment_it_has() -> None:
    for job in foreign_jobs(2, "shared", kexp_labels=True):
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert labels[contract.LABEL_MANAGED_BY] == contract.MANAGED_BY
            assert labels[contract.LABEL_EXPERIMENT].startswith("other-")
        assert "ownerReferences" not in job["metadata"]
