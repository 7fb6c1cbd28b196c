"""Reading experiments, their templates and their S3 files for the CLI's commands.

Read commands only read: nothing here writes to the cluster or to S3.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from minio import Minio
from minio.error import MinioException
from urllib3.exceptions import HTTPError

from kexp.analysis.records import record, spec_of
from kexp.api import contract
from kexp.api.reports import SweepReport
from kexp.api.validation import validate_spec
from kexp.cli.common import EXIT_FAILED, EXIT_NOT_FOUND, Session, fail
from kexp.render.resolved import ResolvedExperiment
from kexp.storage.runfiles import credentials_from_secret, read_sweep
from kexp.storage.s3 import s3_client

TemplateKey = tuple[str, str]
#: What reading from S3 can raise: the store's refusals and an unreachable endpoint.
S3_ERRORS = (MinioException, HTTPError, OSError)


def get_experiment(session: Session, name: str) -> dict[str, Any]:
    """The Experiment ``name`` in the session's namespace; exit 3 when there is none."""
    exp = session.cluster.get("Experiment", session.namespace, name)
    if exp is None:
        fail(f"experiment {name!r} not found in namespace {session.namespace!r}", EXIT_NOT_FOUND)
    return exp


def templates(session: Session, namespace: str | None) -> dict[TemplateKey, dict[str, Any]]:
    """Template specs by (namespace, name); every namespace's when ``namespace`` is None."""
    return {
        (t["metadata"]["namespace"], t["metadata"]["name"]): t.get("spec") or {}
        for t in session.cluster.list_objects("ExperimentTemplate", namespace)
    }


def template_for(
    exp: Mapping[str, Any], known: Mapping[TemplateKey, dict[str, Any]]
) -> dict[str, Any] | None:
    ref = (exp.get("spec") or {}).get("templateRef")
    if not ref:
        return None
    return known.get(((exp.get("metadata") or {}).get("namespace", ""), ref))


def resolved(session: Session, exp: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment's spec with its template merged under it."""
    ref = (exp.get("spec") or {}).get("templateRef")
    template = None
    if ref:
        found = session.cluster.get("ExperimentTemplate", exp["metadata"]["namespace"], ref)
        template = (found or {}).get("spec")
    merged = spec_of(exp, template)
    try:
        return validate_spec(merged)  # with the defaults the run used (seed, episodes, ...)
    except ValueError:
        return merged  # e.g. its template is gone: show what there is


def records(session: Session, all_namespaces: bool) -> list[dict[str, Any]]:
    """Every experiment in scope as a flat record (templates merged)."""
    namespace = None if all_namespaces else session.namespace
    exps = session.cluster.list_objects("Experiment", namespace)
    known = (
        templates(session, namespace)
        if any((e.get("spec") or {}).get("templateRef") for e in exps)
        else {}
    )
    return [record(e, template_for(e, known)) for e in exps]


@dataclass(frozen=True)
class RunStore:
    """Where one run's files are in S3, with a client to read them."""

    client: Minio
    bucket: str
    prefix: str

    def uri(self, name: str) -> str:
        return contract.s3_uri(self.bucket, self.prefix + name)


def run_store(session: Session, exp: Mapping[str, Any], spec: Mapping[str, Any]) -> RunStore:
    """The run's S3 location and a client for it.

    Credentials come from the Secret the experiment names (``spec.storage.secretRef``);
    ``KEXP_S3_ENDPOINT`` overrides the endpoint when the cluster's is not reachable from here
    (e.g. an in-cluster MinIO behind ``kubectl port-forward``), and the ``AWS_*`` variables
    override the keys for users who may not read Secrets.
    """
    meta = exp["metadata"]
    where = ResolvedExperiment(meta["name"], meta["namespace"], meta["uid"], dict(spec))
    data: dict[str, str] = {}
    if not os.environ.get(contract.S3_ACCESS_KEY):
        secret = session.cluster.secret_data(meta["namespace"], where.secret_name)
        if secret is None:
            fail(
                f"Secret {where.secret_name!r} (spec.storage.secretRef) not found in namespace "
                f"{meta['namespace']!r}; or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                EXIT_FAILED,
            )
        data = secret
    creds = credentials_from_secret({**data, **_env_overrides()})
    try:
        client = s3_client(creds)
    except ValueError as exc:
        fail(f"{exc} (set KEXP_S3_ENDPOINT to reach the store from here)")
    return RunStore(client=client, bucket=where.bucket, prefix=where.s3_prefix)


def _env_overrides() -> dict[str, str]:
    out = {
        key: os.environ[key]
        for key in (contract.S3_ACCESS_KEY, contract.S3_SECRET_KEY, contract.S3_REGION_KEY)
        if os.environ.get(key)
    }
    endpoint = os.environ.get("KEXP_S3_ENDPOINT")
    if endpoint:
        out[contract.S3_ENDPOINT_KEY] = endpoint
    return out


def sweep_report(
    session: Session, exp: Mapping[str, Any], spec: Mapping[str, Any]
) -> SweepReport | None:
    """The sweep's sweep.json (every trial); None when it has written none yet. S3 failures
    end the command with one line naming the store."""
    store = run_store(session, exp, spec)
    try:
        return read_sweep(store.client, store.bucket, store.prefix)
    except S3_ERRORS as exc:
        fail(s3_error(store, exc))


def s3_error(store: RunStore, exc: Exception) -> str:
    """One line for an S3 failure that names the store."""
    return f"cannot read s3://{store.bucket}/{store.prefix}: {exc}"
