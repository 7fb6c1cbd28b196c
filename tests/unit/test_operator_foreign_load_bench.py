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
