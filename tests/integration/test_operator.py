"""The operator on the real stack: phases, failures, multi-node, cascade, templates, initFrom."""

from __future__ import annotations

import io
import secrets
import time
from typing import Any, TypeVar

import pytest
from kubernetes import client
from minio import Minio

from kexp.api import contract
from kexp.dev.stack import Stack
from tests.conftest import OperatorProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.stack
T = TypeVar("T")
GROUP, VERSION = "kexp.io", "v1alpha1"


def experiment(name: str, **spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", {})
    body: dict[str, Any] = {
        "algorithm": "PPO",
        "environment": {"id": "CartPole-v1"},
        "training": {"totalSteps": 1000},
        "source": {"repository": "https://example.org/lab.git", "commit": "c" * 40},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Experiment",
        "metadata": {"name": name, "annotations": annotations},
        "spec": body,
    }


class Lab:
    """Create and read Experiments in one namespace."""

    def __init__(self, kube: Any, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(kube)
        self.core = client.CoreV1Api(kube)
        self.batch = client.BatchV1Api(kube)

    def create(self, body: dict[str, Any], plural: str = "experiments") -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, plural, body
        )
        return obj

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, "experiments", name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout_s: float = 45) -> dict[str, Any]:
        return wait_until(
            lambda: s if (s := self.status(name)).get("phase") == phase else None,
            timeout_s=timeout_s,
            what=f"{name} to be {phase} (now {self.status(name).get('phase')})",
        )

    def events(self, name: str) -> list[tuple[str, str, str]]:
        items = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name},involvedObject.kind=Experiment"
        ).items
        return [(e.type, e.reason, e.message) for e in items]

    def wait_events(
        self, name: str, *reasons: str, timeout_s: float = 30
    ) -> list[tuple[str, str, str]]:
        """The Experiment's Events once each of ``reasons`` is among them. kopf posts Events in
        the background, after the status write a test waits for: reading them at once races."""

        def all_posted() -> list[tuple[str, str, str]] | None:
            events = self.events(name)
            return events if set(reasons) <= {r for _t, r, _m in events} else None

        return wait_until(all_posted, timeout_s=timeout_s, what=f"Events {reasons} of {name}")

    def jobs(self, name: str) -> list[Any]:
        return list(
            self.batch.list_namespaced_job(
                self.ns, label_selector=f"{contract.LABEL_EXPERIMENT}={name}"
            ).items
        )


@pytest.fixture
def lab(kube: Any, namespace: str, operator: OperatorProcess) -> Lab:
    return Lab(kube, namespace)


def test_experiment_goes_pending_running_succeeded_with_events(lab: Lab) -> None:
    lab.create(experiment("walk", annotations={"sim.kexp.io/run-for": "4s"}, tags=["smoke"]))
    running = lab.wait_phase("walk", "Running")
    assert running["jobs"] == {"train": "walk-train"}
    conditions = {c["type"]: c["status"] for c in running["conditions"]}
    assert conditions == {
        "Validated": "True",
        "JobCreated": "True",
        "Running": "True",
        "SourceResolved": "True",
    }
    done = lab.wait_phase("walk", "Succeeded")
    prov = done["provenance"]
    assert prov["gitCommit"] == "c" * 40
    assert prov["image"] == "kexp/trainer:test"
    assert len(prov["configHash"]) == 16
    assert prov["submittedAt"] <= prov["startedAt"] <= prov["completedAt"]
    assert done["observedGeneration"] == 1
    lab.wait_events("walk", "JobCreated", "PodRunning", "JobComplete")
    labels = lab.get("walk")["metadata"]["labels"]
    assert labels["kexp.io/tag.smoke"] == "true"
    assert len(lab.jobs("walk")) == 1


def test_oom_killed_trainer_fails_the_experiment_with_the_reason(lab: Lab) -> None:
    annotations = {"sim.kexp.io/exit-code": "137", "sim.kexp.io/reason": "OOMKilled"}
    lab.create(experiment("oom", annotations=annotations, retry={"backoffLimit": 0}))
    failed = lab.wait_phase("oom", "Failed")
    assert failed["reason"] == "OOMKilled"
    assert "exit code 137 (OOMKilled)" in failed["message"]
    warning = wait_until(
        lambda: next(
            (m for t, r, m in lab.events("oom") if (t, r) == ("Warning", "OOMKilled")), None
        ),
        what="OOMKilled Warning event",
    )
    assert "backoff limit" in warning  # the Job's own words, then the pod's
    assert "exit code 137 (OOMKilled)" in warning


def test_a_run_past_its_deadline_fails_with_deadline_exceeded(lab: Lab) -> None:
    lab.create(
        experiment(
            "slow",
            annotations={"sim.kexp.io/run-for": "60s"},
            retry={"backoffLimit": 0, "activeDeadlineSeconds": 2},
        )
    )
    failed = lab.wait_phase("slow", "Failed")
    assert failed["reason"] == "DeadlineExceeded"


def test_an_unschedulable_gpu_request_surfaces_as_a_warning(lab: Lab) -> None:
    lab.create(experiment("huge", resources={"gpus": 64}))
    status = wait_until(
        lambda: s if (s := lab.status("huge")).get("reason") == "Unschedulable" else None,
        what="Unschedulable",
    )
    assert status["phase"] == "Pending"
    assert "nvidia.com/gpu" in status["message"]
    events = lab.wait_events("huge", "Unschedulable")
    assert any(t == "Warning" and r == "Unschedulable" for t, r, _ in events)


def test_multi_node_run_is_an_indexed_job_with_a_rendezvous_service(lab: Lab) -> None:
    lab.create(
        experiment(
            "ddp",
            algorithm="BC",
            expertData="s3://datasets/highway/expert-v1/",
            resources={"nodes": 2, "gpus": 4, "cpu": "8", "memory": "32Gi"},
            annotations={"sim.kexp.io/run-for": "2s"},
        )
    )
    lab.wait_phase("ddp", "Succeeded")
    (job,) = lab.jobs("ddp")
    assert job.spec.completion_mode == "Indexed"
    assert (job.spec.completions, job.spec.parallelism) == (2, 2)
    service = lab.core.read_namespaced_service("ddp-ddp", lab.ns)
    assert service.spec.cluster_ip == "None"
    pods = lab.core.list_namespaced_pod(lab.ns, label_selector="kexp.io/experiment=ddp").items
    assert sorted(
        p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods
    ) == ["0", "1"]
    assert {p.spec.subdomain for p in pods} == {"ddp-ddp"}
    assert len({p.spec.node_name for p in pods}) == 2  # 4 GPUs each: one pod per GPU node


def test_deleting_an_experiment_removes_its_children_but_not_its_s3_data(
    lab: Lab, s3: Minio
) -> None:
    created = lab.create(experiment("gone", annotations={"sim.kexp.io/run-for": "30s"}))
    lab.wait_phase("gone", "Running")
    key = contract.s3_prefix(lab.ns, "gone", created["metadata"]["uid"]) + "results.json"
    s3.put_object(contract.DEFAULT_BUCKET, key, io.BytesIO(b"{}"), 2)

    lab.custom.delete_namespaced_custom_object(
        GROUP,
        VERSION,
        lab.ns,
        "experiments",
        "gone",
        body=client.V1DeleteOptions(propagation_policy="Foreground"),
    )
    wait_until(lambda: not lab.jobs("gone"), what="Job garbage-collected")
    wait_until(
        lambda: (
            not lab.core.list_namespaced_config_map(
                lab.ns, label_selector="kexp.io/experiment=gone"
            ).items
        ),
        what="ConfigMap garbage-collected",
    )
    assert s3.stat_object(contract.DEFAULT_BUCKET, key).size == 2


def test_template_missing_then_created(lab: Lab) -> None:
    lab.create(
        {
            **experiment("from-tpl"),
            "spec": {"templateRef": "ppo-smoke", "hyperparameters": {"learningRate": 0.01}},
        }
    )
    status = wait_until(
        lambda: s if (s := lab.status("from-tpl")).get("reason") == "TemplateNotFound" else None,
        what="TemplateNotFound",
    )
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False"
    assert "ppo-smoke" in validated["message"]
    lab.wait_events("from-tpl", "TemplateNotFound")

    lab.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ExperimentTemplate",
            "metadata": {"name": "ppo-smoke"},
            "spec": {
                "algorithm": "PPO",
                "environment": {"id": "CartPole-v1"},
                "hyperparameters": {"learningRate": 0.0003, "gamma": 0.99},
                "training": {"totalSteps": 5000},
            },
        },
        plural="experimenttemplates",
    )
    done = lab.wait_phase("from-tpl", "Succeeded")
    assert (done["algorithm"], done["environment"]) == ("PPO", "CartPole-v1")  # the template's
    cm = lab.core.read_namespaced_config_map("from-tpl-config", lab.ns)
    assert "learningRate: 0.01" in cm.data["config.yaml"]
    assert "gamma: 0.99" in cm.data["config.yaml"]


def test_a_missing_s3_secret_is_a_condition_and_the_run_starts_once_it_exists(
    lab: Lab, stack: Stack, operator: OperatorProcess
) -> None:
    from kexp.dev import cluster

    lab.core.delete_namespaced_secret(contract.DEFAULT_S3_SECRET, lab.ns)
    lab.create(experiment("no-creds", annotations={"sim.kexp.io/run-for": "1s"}))
    status = wait_until(
        lambda: s if (s := lab.status("no-creds")).get("reason") == "S3SecretMissing" else None,
        what="S3SecretMissing",
    )
    assert status["phase"] == "Pending"
    storage = next(c for c in status["conditions"] if c["type"] == "StorageReady")
    assert storage["status"] == "False"
    assert f"Secret '{contract.DEFAULT_S3_SECRET}' (spec.storage.secretRef)" in storage["message"]
    assert ("Warning", "S3SecretMissing", status["message"]) in lab.wait_events(
        "no-creds", "S3SecretMissing"
    )
    assert lab.jobs("no-creds") == []
    assert operator.proc.poll() is None  # reported, not crashed

    cluster.apply_s3_secret(lab.core.api_client, lab.ns, stack.s3_credentials())
    done = lab.wait_phase("no-creds", "Succeeded", timeout_s=60)
    assert next(c for c in done["conditions"] if c["type"] == "StorageReady")["status"] == "True"
    assert len(lab.jobs("no-creds")) == 1


def test_init_from_waits_for_the_first_experiment_and_passes_its_checkpoint(lab: Lab) -> None:
    lab.create(
        experiment(
            "rl", algorithm="CIMRL", expertData="s3://datasets/x/", initFrom={"experiment": "bc"}
        )
    )
    waiting = lab.wait_phase("rl", "Waiting")
    assert "'bc'" in waiting["message"]
    bc = lab.create(
        experiment(
            "bc",
            algorithm="BC",
            expertData="s3://datasets/x/",
            annotations={"sim.kexp.io/run-for": "2s"},
        )
    )
    assert lab.status("rl").get("phase") == "Waiting"
    lab.wait_phase("bc", "Succeeded")
    done = lab.wait_phase("rl", "Succeeded")
    uri = f"s3://experiments/{lab.ns}/bc/{bc['metadata']['uid']}/checkpoints/best.pt"
    assert done["provenance"]["initFromCheckpoint"] == uri
    cm = lab.core.read_namespaced_config_map("rl-config", lab.ns)
    assert f"initCheckpoint: {uri}" in cm.data["config.yaml"]


def test_init_from_cycle_is_reported(lab: Lab) -> None:
    lab.create(experiment("a", initFrom={"experiment": "b"}))
    lab.create(experiment("b", initFrom={"experiment": "a"}))
    for name, chain in (("a", "a -> b -> a"), ("b", "b -> a -> b")):
        failed = lab.wait_phase(name, "Failed")
        assert failed["reason"] == "InitFromCycle"
        assert chain in failed["message"]
    assert lab.jobs("a") == []
    assert lab.jobs("b") == []


def test_operator_crash_between_job_create_and_status_write_creates_no_second_job(
    stack: Stack, kube: Any, crds: None, tmp_path: Any
) -> None:
    from kexp.dev import cluster

    ns = f"r-crash-{int(time.time())}"
    cluster.ensure_namespace(kube, ns)
    cluster.apply_s3_secret(kube, ns, stack.s3_credentials())
    lab = Lab(kube, ns)
    try:
        crashing = OperatorProcess(
            stack, [ns], tmp_path / "op1.log", env={"KEXP_FAULT_EXIT_AFTER_CREATING": "Job"}
        )
        crashing.wait_ready()
        lab.create(experiment("once", annotations={"sim.kexp.io/run-for": "2s"}))
        assert crashing.proc.wait(timeout=60) == 17  # died right after creating the Job
        assert len(lab.jobs("once")) == 1
        assert "jobs" not in lab.status("once")  # the status write never happened

        healthy = OperatorProcess(stack, [ns], tmp_path / "op2.log")
        try:
            healthy.wait_ready()
            done = lab.wait_phase("once", "Succeeded")
            assert done["jobs"]["train"] == "once-train"
            assert len(lab.jobs("once")) == 1
        finally:
            healthy.stop()
    finally:
        client.CoreV1Api(kube).delete_namespace(ns)


def test_statuses_held_while_the_operator_is_behind_are_all_written(
    stack: Stack, kube: Any, crds: None, tmp_path: Any
) -> None:
    """A burst with the threshold at 1 (behind whenever two passes overlap): every run still
    ends with its whole status, one Job and one Event per step."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from kexp.dev import cluster

    ns = f"r-held-{secrets.token_hex(3)}"
    cluster.ensure_namespace(kube, ns)
    cluster.apply_s3_secret(kube, ns, stack.s3_credentials())
    lab = Lab(kube, ns)
    op = OperatorProcess(stack, [ns], tmp_path / "op.log", env={"KEXP_DEFER_STATUS_ABOVE": "1"})
    try:
        op.wait_ready()
        names = [f"burst-{i}" for i in range(16)]
        with ThreadPoolExecutor(8) as pool:
            run_for = {"sim.kexp.io/run-for": "2s"}
            list(pool.map(lambda n: lab.create(experiment(n, annotations=run_for)), names))
        for name in names:
            done = lab.wait_phase(name, "Succeeded", timeout_s=120)
            assert done["jobs"] == {"train": f"{name}-train"}
            conditions = {c["type"]: c["status"] for c in done["conditions"]}
            assert conditions["JobCreated"] == "True"
            assert conditions["Completed"] == "True"
            prov = done["provenance"]
            assert prov["submittedAt"] <= prov["startedAt"] <= prov["completedAt"]
            assert len(lab.jobs(name)) == 1
            reasons = [r for _t, r, _m in lab.wait_events(name, "JobCreated")]
            assert reasons.count("JobCreated") == 1, reasons
        url = f"http://127.0.0.1:{op.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        held = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("kexp_operator_status_writes_held_total ")
        )
        assert held > 0, "no status was held: the burst did not exercise the path"
    finally:
        op.stop()
        client.CoreV1Api(kube).delete_namespace(ns)


@pytest.fixture
def unwatched_namespace(kube: Any, stack: Stack) -> Any:
    """A namespace the session operator does not watch (it watches t-*)."""
    from kexp.dev import cluster

    name = f"r-{secrets.token_hex(4)}"
    cluster.ensure_namespace(kube, name)
    cluster.apply_s3_secret(kube, name, stack.s3_credentials())
    yield name
    client.CoreV1Api(kube).delete_namespace(name)


def in_process_memo(posted: list[tuple[str, str]]) -> Any:
    """The state configure() gives the operator, for a pass run in this process (the
    caller closes ``memo.kube``)."""
    import kopf

    from kexp.handlers.experiments import Deferrals
    from kexp.handlers.metrics import OperatorMetrics
    from kexp.kube import aio
    from kexp.render.settings import RenderSettings

    memo = kopf.Memo()
    memo.post_event = lambda _body, kind, reason, _message: posted.append((kind, reason))
    memo.kube = aio.Kube.connect(kopf.OperatorSettings())
    memo.metrics = OperatorMetrics()
    memo.render = RenderSettings(trainer_image="kexp/trainer:test")
    memo.locks, memo.bodies, memo.failures, memo.retries, memo.written = {}, {}, {}, {}, {}
    memo.running, memo.shared = set(), {"indexes": None, "secrets": {}}
    memo.deferrals = Deferrals()
    return memo


def test_a_409_on_the_status_write_is_retried_with_a_fresh_read(
    stack: Stack,
    kube: Any,
    unwatched_namespace: str,
    crds: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs one pass in-process on a stale copy, so the real API server answers 409."""
    namespace = unwatched_namespace
    import asyncio

    from kexp.handlers.experiments import Indexes, reconcile
    from kexp.handlers.metrics import OperatorMetrics

    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))
    lab = Lab(kube, namespace)
    stale = lab.create(experiment("race"))
    # Someone else writes first: the copy the pass starts from is now out of date.
    lab.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "experiments", "race", {"metadata": {"labels": {"x": "y"}}}
    )

    posted: list[tuple[str, str]] = []

    async def one_pass() -> OperatorMetrics:
        memo = in_process_memo(posted)
        empty: dict[Any, Any] = {}
        try:
            indexes = Indexes(empty, empty, empty, empty, empty, empty)
            await reconcile(memo, namespace, "race", stale, indexes)
        finally:
            await memo.kube.close()
        return memo.metrics

    metrics = asyncio.run(one_pass())
    assert metrics.reconciles.labels(result="conflict")._value.get() == 1
    assert metrics.reconciles.labels(result="ok")._value.get() == 1
    status = lab.status("race")
    assert status["phase"] == "Pending"
    assert status["jobs"] == {"train": "race-train"}
    assert lab.get("race")["metadata"]["labels"]["x"] == "y"  # the other write survived
    assert len(lab.jobs("race")) == 1
    assert posted == [("Normal", "JobCreated")]  # posted once, after the write that won


def test_a_branch_is_resolved_to_its_commit_with_git_ls_remote(lab: Lab, tmp_path: Any) -> None:
    import subprocess

    repo = tmp_path / "lab.git"
    work = tmp_path / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "train.py").write_text("print('hi')\n")
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "x"], check=True)
    subprocess.run([*git, "-C", str(work), "push", "-q", str(repo), "main"], check=True)
    head = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()

    body = experiment("from-branch")
    body["spec"]["source"] = {"repository": f"file://{repo}", "revision": "main"}
    lab.create(body)
    status = wait_until(
        lambda: (
            s if (s := lab.status("from-branch")).get("provenance", {}).get("gitCommit") else None
        ),
        what="commit resolved",
    )
    assert status["provenance"]["gitCommit"] == head
    assert status["provenance"]["gitBranch"] == "main"

    body = experiment("bad-branch")
    body["spec"]["source"] = {"repository": f"file://{repo}", "revision": "nope"}
    lab.create(body)

    def source_condition() -> dict[str, Any] | None:
        conditions = lab.status("bad-branch").get("conditions", [])
        return next((c for c in conditions if c["type"] == "SourceResolved"), None)

    cond = wait_until(source_condition, what="SourceResolved condition")
    assert cond["status"] == "False"
    assert "'nope' not found" in cond["message"]


def test_operator_metrics_pass_promtool_and_reach_prometheus(
    lab: Lab, operator: OperatorProcess, stack: Stack
) -> None:
    import subprocess
    import urllib.request

    lab.create(experiment("counted"))
    lab.wait_phase("counted", "Succeeded")
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    assert "kexp_operator_reconcile_duration_seconds_bucket" in text
    check = subprocess.run(
        [str(stack.bin_dir / "promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    prom = stack.prometheus()
    prom.add_target("kexp-operator-test", f"127.0.0.1:{operator.metrics_port}")
    try:
        result = prom.wait_for(
            'kexp_operator_experiments{job="kexp-operator-test",phase="Succeeded"} >= 1'
        )
        assert float(result[0]["value"][1]) >= 1
    finally:
        prom.remove_target("kexp-operator-test")


def test_operator_logs_and_events_never_contain_the_s3_credentials(
    lab: Lab, operator: OperatorProcess, stack: Stack
) -> None:
    lab.create(experiment("quiet"))
    lab.wait_phase("quiet", "Succeeded")
    creds = stack.s3_credentials()
    log = operator.log_path.read_text(errors="replace")
    assert "kexp operator started" in log  # the log being read is the operator's
    events = " ".join(m for _t, _r, m in lab.wait_events("quiet", "JobComplete"))
    config = lab.core.read_namespaced_config_map("quiet-config", lab.ns).data["config.yaml"]
    status = str(lab.status("quiet"))
    for text in (log, events, config, status):
        assert creds.secret_key not in text
        assert creds.access_key not in text


@pytest.mark.slow
def test_the_whole_chain_from_apply_to_harvested_scores(lab: Lab, kube: Any, tmp_path: Any) -> None:
    """Experiment -> operator -> Job -> the real trainer (the pod's command, env and files,
    run as a process: kwok nodes run no containers) -> MinIO -> results in status."""
    from kexp.dev.podrunner import run_pod_as_process

    lab.create(
        experiment(
            "chain",
            annotations={"sim.kexp.io/run-for": "40s"},
            environment={"id": "CartPole-v1", "numEnvs": 4},
            hyperparameters={"learningRate": 2.5e-4, "nSteps": 128, "batchSize": 128},
            training={"totalSteps": 4096, "seed": 1, "checkpointEvery": 2048},
            evaluation={"episodes": 3},
            objective={"metric": "reward", "mode": "max"},
        )
    )
    lab.wait_phase("chain", "Running")
    job = client.ApiClient().sanitize_for_serialization(
        lab.batch.read_namespaced_job("chain-train", lab.ns)
    )
    trainer = run_pod_as_process(kube, lab.ns, job, tmp_path, tmp_path / "trainer.log")
    assert trainer.wait(timeout=120) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    done = lab.wait_phase("chain", "Succeeded", timeout_s=60)
    assert done["results"]["reward"] > 0
    assert done["score"] == done["results"]["reward"]  # the objective's metric
    assert done["checkpoints"]["best"].endswith("/checkpoints/best.pt")
    assert done["checkpoints"]["bestStep"] == 4096
    harvested = next(c for c in done["conditions"] if c["type"] == "Harvested")
    assert harvested["status"] == "True"


def test_progress_from_the_heartbeat_and_stalled_when_it_stops(
    lab: Lab, s3: Minio, stack: Stack
) -> None:
    from kexp.api.reports import ProgressReport

    created = lab.create(experiment("beat", annotations={"sim.kexp.io/run-for": "60s"}))
    lab.wait_phase("beat", "Running")
    key = contract.s3_prefix(lab.ns, "beat", created["metadata"]["uid"]) + "progress.json"

    def beat(step: int, updated_at: str) -> None:
        data = (
            ProgressReport(
                step=step, total_steps=1000, steps_per_second=25.0, updated_at=updated_at
            )
            .to_json()
            .encode()
        )
        s3.put_object(contract.DEFAULT_BUCKET, key, io.BytesIO(data), len(data))

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    beat(400, now)
    status = wait_until(
        lambda: s if (s := lab.status("beat")).get("progress", {}).get("step") == 400 else None,
        what="progress in status",
    )
    assert status["progress"]["percent"] == 40.0
    assert status["progress"]["stepsPerSecond"] == 25.0
    assert "eta" in status["progress"]

    beat(410, "2020-01-01T00:00:00Z")  # the trainer stopped beating long ago

    def stalled() -> dict[str, Any] | None:
        conds = lab.status("beat").get("conditions", [])
        found = next((c for c in conds if c["type"] == "Stalled"), None)
        return found if found and found["status"] == "True" else None

    condition = wait_until(stalled, what="Stalled")
    assert "no progress heartbeat for" in condition["message"]
    assert "last at step 410" in condition["message"]


def test_a_status_held_by_an_operator_that_stays_behind_is_written_in_the_end(
    stack: Stack,
    kube: Any,
    unwatched_namespace: str,
    crds: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pass in-process with the operator behind throughout: the status and its Event wait in
    memory, and the longest wait (KEXP_MAX_STATUS_DEFER_S, here 1 s) ends it with a real write
    and then the Event."""
    import asyncio

    from kexp.handlers import experiments
    from kexp.handlers.experiments import Deferrals, Indexes, reconcile

    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))
    monkeypatch.setattr(experiments, "MAX_DEFER_S", 1.0)
    namespace = unwatched_namespace
    lab = Lab(kube, namespace)
    body = lab.create(experiment("held"))
    posted: list[tuple[str, str]] = []

    async def behind_throughout() -> dict[str, Any]:
        memo = in_process_memo(posted)
        memo.deferrals = Deferrals(threshold=1, in_flight=100)
        empty: dict[Any, Any] = {}
        indexes = Indexes({(namespace, "held"): [body]}, empty, empty, empty, empty, empty)
        try:
            await reconcile(memo, namespace, "held", body, indexes)
            seen: dict[str, Any] = {
                "held": dict(memo.deferrals.statuses),
                "stored": lab.status("held"),
                "jobs": len(lab.jobs("held")),
                "posted while held": list(posted),
            }
            # The longest wait (1 s) passes: the loop runs its timer before this sleep ends, and
            # the flush pass it started, if still going, is awaited however slow the machine.
            await asyncio.sleep(1.2)
            await asyncio.wait_for(asyncio.gather(*memo.deferrals.flushes), timeout=30)
            seen["flushes left"] = len(memo.deferrals.flushes)
            seen["held after"] = dict(memo.deferrals.statuses)
        finally:
            await memo.kube.close()
        return seen

    seen = asyncio.run(behind_throughout())
    assert seen["jobs"] == 1  # the Job was created at once
    assert seen["stored"] == {}  # while its status waited in memory
    assert seen["held"][(namespace, "held")]["phase"] == "Pending"
    assert (seen["flushes left"], seen["held after"]) == (0, {})
    status = lab.status("held")
    assert (status["phase"], status["jobs"]) == ("Pending", {"train": "held-train"})
    assert status == seen["held"][(namespace, "held")]
    # The Event waited with the status it records, and came once, not once per pass.
    assert seen["posted while held"] == []
    assert posted == [("Normal", "JobCreated")]
