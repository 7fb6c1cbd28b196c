"""Reading what a trainer wrote under its run's S3 prefix (results, heartbeat, history).

Used by the operator's harvest (in a worker thread) and by the CLI, so both read the same
files the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from minio import Minio

from kexp.api import contract
from kexp.api.reports import ProgressReport, ResultsReport, SweepReport
from kexp.status.harvest import HarvestError, merge_csv_scores, scores_from_csv
from kexp.storage.s3 import S3Credentials, read_object


def credentials_from_secret(data: Mapping[str, str]) -> S3Credentials:
    """S3 credentials from the decoded data of the Secret ``spec.storage.secretRef`` names."""
    return S3Credentials(
        endpoint=data.get(contract.S3_ENDPOINT_KEY, ""),
        access_key=data.get(contract.S3_ACCESS_KEY, ""),
        secret_key=data.get(contract.S3_SECRET_KEY, ""),
        region=data.get(contract.S3_REGION_KEY, "us-east-1"),
    )


def read_results(
    client: Minio,
    bucket: str,
    prefix: str,
    csv_spec: Mapping[str, Any] | None,
    *,
    job_succeeded: bool,
) -> tuple[ResultsReport | None, str | None]:
    """The run's results (results.json, with a custom CSV's scores laid over), or why not.

    Returns ``(report, None)`` or ``(None, message)``; the message names the S3 object and
    what is wrong with it, and never raises for a missing or malformed file.
    """
    results_uri = contract.s3_uri(bucket, prefix + contract.RESULTS_FILE)
    raw = read_object(client, bucket, prefix + contract.RESULTS_FILE)
    report: ResultsReport | None = None
    if raw is not None:
        try:
            report = ResultsReport.model_validate_json(raw)
        except ValueError as exc:
            first = str(exc).splitlines()
            return None, f"{results_uri} is malformed: {' '.join(first[:3])}"
    if report is not None and report.outcome == "failed":
        return report, None  # a trainer that failed before evaluating wrote no CSV: say why
    if csv_spec is None:
        if report is None:
            return None, f"no {results_uri}: the trainer wrote no results"
        return report, None
    csv_key = prefix + str(csv_spec.get("path") or "results.csv")
    csv_uri = contract.s3_uri(bucket, csv_key)
    raw_csv = read_object(client, bucket, csv_key)
    if raw_csv is None:
        return None, f"no {csv_uri} (spec.evaluation.resultsCsv.path): the evaluator wrote no CSV"
    try:
        scores = scores_from_csv(raw_csv.decode("utf-8", errors="replace"), csv_spec, csv_uri)
    except HarvestError as exc:
        return None, str(exc)
    return merge_csv_scores(report, scores, job_succeeded), None


def read_progress(client: Minio, bucket: str, prefix: str) -> ProgressReport | None:
    """The run's latest heartbeat; None when there is none or it is unreadable."""
    raw = read_object(client, bucket, prefix + contract.PROGRESS_FILE)
    if raw is None:
        return None
    try:
        return ProgressReport.model_validate_json(raw)
    except ValueError:
        return None


def read_sweep(client: Minio, bucket: str, prefix: str) -> SweepReport | None:
    """A sweep's report (sweep.json); None when there is none or it is unreadable."""
    raw = read_object(client, bucket, prefix + contract.SWEEP_FILE)
    if raw is None:
        return None
    try:
        return SweepReport.model_validate_json(raw)
    except ValueError:
        return None


def read_text(client: Minio, bucket: str, key: str) -> str | None:
    """A text object (e.g. metrics.csv), or None when absent."""
    raw = read_object(client, bucket, key)
    return None if raw is None else raw.decode("utf-8", errors="replace")
