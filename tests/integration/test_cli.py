"""The kexp CLI against the real stack and the real operator: every command, good and bad input.

Runs are simulated by kwok (``sim.kexp.io/*`` annotations) except in the end-to-end test;
what a trainer would have written (results.json, metrics.csv, a custom CSV) is put into the
real MinIO under the run's prefix before its pod ends, so the operator harvests it for real.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kubernetes import client
from minio import Minio

from kexp.api import contract
from kexp.api.reports import CheckpointsReport, EnvironmentReport, ResultsReport
from kexp.cli.main import cli
from kexp.dev.stack import Stack
from tests.conftest import OperatorProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


class Kexp:
    """Runs ``kexp`` commands in one namespace of the stack and reads what they did."""

    def __init__(self, stack: Stack, kube: Any, namespace: str, s3: Minio) -> None:
        self.stack = stack
        self.ns = namespace
        self.s3 = s3
        self.custom = client.CustomObjectsApi(kube)
        self.batch = client.BatchV1Api(kube)
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        base = ["--kubeconfig", str(self.stack.kubeconfig), "-n", self.ns]
        # Cluster options belong to each subcommand, after its name (``kexp list -n x``).
        argv = [args[0], *base, *args[1:]] if args[0] != "dev" else list(args)
        return self.runner.invoke(cli, argv, input=input, catch_exceptions=False)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, f"kexp {' '.join(args)}: {result.output}"
        return result

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "kexp.io", "v1alpha1", self.ns, "experiments", name
        )
        return obj

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def wait_phase(self, name: str, phase: str, timeout_s: float = 60) -> dict[str, Any]:
        return wait_until(
            lambda: s if (s := self.get(name).get("status") or {}).get("phase") == phase else None,
            timeout_s=timeout_s,
            what=f"{name} to be {phase}",
        )

    def prefix(self, name: str) -> str:
        return contract.s3_prefix(self.ns, name, self.get(name)["metadata"]["uid"])

    def put(self, name: str, file: str, text: str) -> None:
        data = text.encode()
        key = self.prefix(name) + file
        self.s3.put_object(contract.DEFAULT_BUCKET, key, io.BytesIO(data), len(data))

    def results(self, name: str, scores: dict[str, float], **extra: Any) -> None:
        prefix = self.prefix(name)
        report = ResultsReport(
            outcome=extra.pop("outcome", "succeeded"),
            scores=scores,
            step=1000,
            checkpoints=CheckpointsReport(
                best=contract.s3_uri("experiments", prefix + contract.BEST_CHECKPOINT),
                best_step=1000,
            ),
            environment=EnvironmentReport(python_version="3.11.7", torch_version="2.5.0"),
            **extra,
        )
        self.put(name, contract.RESULTS_FILE, report.to_json())


@pytest.fixture
def kexp(stack: Stack, kube: Any, namespace: str, s3: Minio, operator: OperatorProcess) -> Kexp:
    return Kexp(stack, kube, namespace, s3)


def _run(k: Kexp, name: str, *sets: str, run_for: str = "4s", tags: tuple[str, ...] = ()) -> None:
    """``kexp new --apply`` of a small PPO run whose simulated pod runs for ``run_for``."""
    args = ["new", name, "--no-source", "--annotation", f"sim.kexp.io/run-for={run_for}"]
    args += ["--set", "algorithm=PPO", "--set", "environment.id=CartPole-v1"]
    args += ["--set", "training.totalSteps=1000"]
    for item in sets:
        args += ["--set", item]
    for tag in tags:
        args += ["--tag", tag]
    k.ok(*args, "--apply")


def _metrics_csv(rewards: list[float]) -> str:
    lines = ["step,time,policy_loss,episode_reward"]
    lines += [f"{(i + 1) * 100},{i * 0.5},0.1,{r}" for i, r in enumerate(rewards)]
    return "\n".join(lines) + "\n"


# ---- new / submit ---------------------------------------------------------------------------
def test_new_fills_the_source_from_git_and_applies(kexp: Kexp, tmp_path: Path) -> None:
    repo = tmp_path / "lab"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }
    for argv in (
        ["git", "init", "-q", "-b", "ablation"],
        ["git", "remote", "add", "origin", "https://example.org/lab.git"],
        ["git", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(argv, cwd=repo, check=True, env=env)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    out = kexp.ok(
        "new", "lr-low", "--source-dir", str(repo), "--set", "algorithm=PPO",
        "--set", "environment.id=CartPole-v1", "--set", "training.totalSteps=500",
        "--set", "hyperparameters.learningRate=1e-4", "--tag", "lr", "-d", "lower lr", "--apply",
    )  # fmt: skip
    assert "experiment.kexp.io/lr-low created" in out.output
    spec = kexp.get("lr-low")["spec"]
    assert spec["source"] == {
        "commit": commit,
        "revision": "ablation",
        "repository": "https://example.org/lab.git",
        "dirty": False,
    }
    assert spec["hyperparameters"]["learningRate"] == pytest.approx(1e-4)
    assert spec["tags"] == ["lr"]
    assert spec["description"] == "lower lr"
    status = kexp.wait_phase("lr-low", "Succeeded")
    assert status["provenance"]["gitCommit"] == commit
    assert status["provenance"]["gitDirty"] is False


def test_new_without_apply_writes_yaml_and_refuses_to_overwrite(kexp: Kexp, tmp_path: Path) -> None:
    target = tmp_path / "exp.yaml"
    missing = kexp("new", "from-file", "--no-source", "-t", "cartpole-smoke", "-f", str(target))
    # The template does not exist in this namespace: refused before anything is written.
    assert missing.exit_code == 3
    assert not target.exists()
    kexp.ok("submit", str(REPO / "examples/templates/cartpole-smoke.yaml"), "--no-source")
    kexp.ok("new", "from-file", "--no-source", "-t", "cartpole-smoke", "-f", str(target))
    doc = yaml.safe_load(target.read_text())
    assert doc["spec"] == {"templateRef": "cartpole-smoke"}
    target.write_text("mine")
    again = kexp("new", "from-file", "--no-source", "-t", "cartpole-smoke", "-f", str(target))
    assert again.exit_code == 1
    assert "exists; pass --force" in again.output
    assert target.read_text() == "mine"
    assert not kexp.exists("from-file")  # writing a file applies nothing


def test_new_from_copies_an_experiments_spec_and_changes_only_what_is_asked(
    kexp: Kexp, tmp_path: Path
) -> None:
    commit = "a" * 40
    kexp.ok(
        "new", "orig", "--no-source", "--set", "algorithm=PPO",
        "--set", "environment.id=CartPole-v1", "--set", "training.totalSteps=1000",
        "--set", "hyperparameters.learningRate=3e-4", "--set", f"source.commit={commit}",
        "--tag", "baseline", "-d", "the baseline", "--apply",
    )  # fmt: skip
    original = kexp.get("orig")["spec"]

    out = kexp.ok(
        "new", "lr-up", "--from", "orig", "--no-source",
        "--set", "hyperparameters.learningRate=1e-3", "--tag", "lr", "--apply",
    )  # fmt: skip
    assert "experiment.kexp.io/lr-up created" in out.output
    copy = kexp.get("lr-up")
    assert copy["metadata"]["annotations"][contract.ANNOTATION_COPIED_FROM] == "orig"
    spec = copy["spec"]
    assert spec["hyperparameters"]["learningRate"] == pytest.approx(1e-3)
    assert spec["tags"] == ["baseline", "lr"]
    # Everything not asked for is the original's, its source included (--no-source).
    unchanged = {k: v for k, v in spec.items() if k not in ("hyperparameters", "tags")}
    assert unchanged == {k: v for k, v in original.items() if k not in ("hyperparameters", "tags")}
    assert spec["source"]["commit"] == commit
    assert kexp.get("orig")["spec"] == original  # the copied run is left as it was
    assert "Copied from: orig" in " ".join(kexp.ok("show", "lr-up").output.split())

    # Without --no-source the copy records the code run now, not the original's.
    target = tmp_path / "copy.yaml"
    out = kexp.ok(
        "new", "again", "--from", "orig", "--source-dir", str(tmp_path), "-f", str(target)
    )
    assert "is not a git work tree; spec.source left empty" in out.output
    doc = yaml.safe_load(target.read_text())
    assert "source" not in doc["spec"]
    assert doc["spec"]["description"] == "the baseline"
    assert not kexp.exists("again")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["new", "Bad_Name"], 2, "experiment name 'Bad_Name'"),
        (["new", "x", "--from", "no-such-run"], 3, "--from: Experiment 'no-such-run' not found"),
        (["new", "x", "--from", "a", "-t", "b"], 2, "--from and --template: pick one"),
        (["new", "x", "--set", "nokey"], 2, "--set 'nokey': expected KEY=VALUE"),
        (["new", "x", "--annotation", "novalue"], 2, "--annotation 'novalue'"),
        (["new", "x", "-t", "no-such-template"], 3, "ExperimentTemplate 'no-such-template'"),
        (
            ["new", "x", "--set", "algorithm=PPO", "--set", "environment.id=CartPole-v1",
             "--set", "training.totalSteps=10", "--set", "hyperparameters.learningRate=-1"],
            1,
            "hyperparameters.learningRate must be a number > 0",
        ),
        (["new", "x", "--set", "algorithm=Nope"], 1, "spec.algorithm"),
        (["new", "x", "--dry-run"], 2, "--dry-run goes with --apply"),
    ],
)  # fmt: skip
def test_new_rejects_bad_input_with_one_clear_line(
    kexp: Kexp, args: list[str], code: int, message: str
) -> None:
    result = kexp(*args, "--no-source")
    assert result.exit_code == code, result.output
    assert message in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert not kexp.exists("x")


def test_submit_dry_run_prints_the_operators_objects_and_creates_nothing(kexp: Kexp) -> None:
    manifest = {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "dry"},
        "spec": {
            "algorithm": "PPO",
            "environment": {"id": "CartPole-v1"},
            "training": {"totalSteps": 100},
            "resources": {"gpus": 2, "nodes": 2},
            "tags": ["ddp"],
        },
    }
    out = kexp.ok("submit", "-", "--dry-run", "--no-source", input=yaml.safe_dump(manifest))
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Experiment", "ConfigMap", "Service", "Job"]
    job = docs[-1]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 2
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"][contract.GPU_RESOURCE] == "2"
    # The server filled defaults in (a dry run goes through admission), and the config the
    # trainer would read is the operator's rendering of the resolved spec.
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    config = yaml.safe_load(docs[1]["data"][contract.CONFIG_FILE])
    assert config["spec"]["resources"]["nodes"] == 2
    assert "server-side dry run: nothing was created" in out.stderr
    assert not kexp.exists("dry")
    jobs = kexp.batch.list_namespaced_job(kexp.ns).items
    assert jobs == []


def test_submit_creates_once_and_never_replaces(kexp: Kexp, tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    body = {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "once"},
        "spec": {
            "algorithm": "PPO",
            "environment": {"id": "CartPole-v1"},
            "training": {"totalSteps": 100},
            "description": "first",
        },
    }
    path.write_text(yaml.safe_dump(body))
    assert "experiment.kexp.io/once created" in kexp.ok("submit", str(path), "--no-source").output
    assert "unchanged" in kexp.ok("submit", str(path), "--no-source").output
    body["spec"]["training"]["totalSteps"] = 999
    path.write_text(yaml.safe_dump(body))
    again = kexp("submit", str(path), "--no-source")
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert "immutable" in again.output
    assert kexp.get("once")["spec"]["training"]["totalSteps"] == 100


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("kind: Pod\napiVersion: v1\nmetadata: {name: p}\n", 2, "document 1: kind 'Pod'"),
        ("apiVersion: kexp.io/v1\nkind: Experiment\nmetadata: {name: a}\n", 2, "apiVersion"),
        ("apiVersion: kexp.io/v1alpha1\nkind: Experiment\nmetadata: {}\n", 2, "metadata.name"),
        ("a: [\n", 2, "not valid YAML"),
        ("", 2, "no objects"),
        # Refused by the API server itself (CRD schema), its message naming the field:
        (
            "apiVersion: kexp.io/v1alpha1\nkind: Experiment\nmetadata: {name: neg}\n"
            "spec: {algorithm: PPO, environment: {id: CartPole-v1}, training: {totalSteps: 1},"
            " hyperparameters: {learningRate: -1}}\n",
            1,
            "learningRate",
        ),
    ],
)
def test_submit_rejects_bad_files(kexp: Kexp, text: str, code: int, message: str) -> None:
    result = kexp("submit", "-", "--no-source", input=text)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not kexp.exists("neg")


def test_submit_of_a_missing_file_exits_3(kexp: Kexp, tmp_path: Path) -> None:
    result = kexp("submit", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 3
    assert "no such file" in result.output


def test_the_kubectl_plugin_is_the_same_program(kexp: Kexp) -> None:
    """`kubectl kexp ...` finds `kubectl-kexp` on PATH and runs the CLI."""
    import sys

    _run(kexp, "via-kubectl", run_for="1s")
    env = {**os.environ, **kexp.stack.env()}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    plugins = subprocess.run(
        ["kubectl", "plugin", "list"], env=env, capture_output=True, text=True, check=False
    )
    assert "kubectl-kexp" in plugins.stdout
    out = subprocess.run(
        ["kubectl", "kexp", "list", "-n", kexp.ns, "-o", "name"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["experiment/via-kubectl"]
    missing = subprocess.run(
        ["kubectl", "kexp", "show", "nope", "-n", kexp.ns],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 3
    assert missing.stderr.strip() == f"error: experiment 'nope' not found in namespace '{kexp.ns}'"


# ---- list / show / compare / export -----------------------------------------------------------
@pytest.fixture
def three_runs(kexp: Kexp) -> Kexp:
    """Two PPO runs with scores (one tagged lr), one failing SAC run."""
    _run(kexp, "ppo-a", "hyperparameters.learningRate=3e-4", "objective.metric=reward",
         run_for="6s", tags=("lr",))  # fmt: skip
    _run(kexp, "ppo-b", "hyperparameters.learningRate=1e-3", "objective.metric=reward",
         run_for="6s")  # fmt: skip
    kexp.ok(
        "new", "sac-c", "--no-source", "--annotation", "sim.kexp.io/exit-code=1",
        "--set", "algorithm=SAC", "--set", "environment.id=Pendulum-v1",
        "--set", "training.totalSteps=1000", "--apply",
    )  # fmt: skip
    kexp.results("ppo-a", {"reward": 200.0, "reward_std": 5.0})
    kexp.put("ppo-a", contract.METRICS_FILE, _metrics_csv([10, 50, 100, 150, 180, 190, 195] * 2))
    kexp.results("ppo-b", {"reward": 350.0, "reward_std": 9.0})
    kexp.wait_phase("ppo-a", "Succeeded")
    kexp.wait_phase("ppo-b", "Succeeded")
    kexp.wait_phase("sac-c", "Failed")
    return kexp


def test_list_filters_sorts_and_formats(three_runs: Kexp) -> None:
    k = three_runs
    table = k.ok("list", "--sort", "score").output.splitlines()
    assert table[0].split()[:3] == ["NAME", "PHASE", "ALGO"]
    names = [line.split()[0] for line in table[1:]]
    assert names == ["ppo-b", "ppo-a", "sac-c"]  # best score first, unscored last
    assert "350" in table[1]
    assert "Succeeded" in table[1]
    only_failed = k.ok("list", "--phase", "failed", "-o", "name").output.split()
    assert only_failed == ["experiment/sac-c"]
    tagged = json.loads(k.ok("list", "--tag", "lr", "-o", "json").output)
    assert [r["name"] for r in tagged] == ["ppo-a"]
    assert tagged[0]["hp.learningRate"] == 3e-4
    sac = yaml.safe_load(k.ok("list", "--algorithm", "SAC", "-o", "yaml").output)
    assert [r["name"] for r in sac] == ["sac-c"]
    none = k("list", "--tag", "nothing-has-this")
    assert none.exit_code == 4
    assert "no experiments match the filters" in none.output


def test_show_and_compare(three_runs: Kexp) -> None:
    k = three_runs
    shown = k.ok("show", "ppo-a").output
    assert "Phase:" in shown
    assert "Succeeded" in shown
    assert "reward:" in shown
    assert "200" in shown
    assert "pythonVersion: 3.11.7" in shown  # harvested from results.json's environment
    assert json.loads(k.ok("show", "ppo-b", "-o", "json").output)["status"]["score"] == 350
    missing = k("show", "nope")
    assert missing.exit_code == 3
    assert "experiment 'nope' not found" in missing.output

    out = k.ok("compare", "ppo-a", "ppo-b")
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ppo-a", "ppo-b", "*"]  # ppo-b is best by the objective
    lr = next(line for line in lines if line.startswith("hp.learningRate"))
    assert lr.split()[1:] == ["0.0003", "0.001"]
    assert not any(line.startswith("algorithm") for line in lines)  # the same: hidden
    assert "identical setting(s) hidden" in out.stderr
    data = json.loads(k.ok("compare", "ppo-a", "ppo-b", "-o", "json").output)
    assert data["results"]["score"] == {"ppo-a": 200, "ppo-b": 350}
    assert k("compare", "ppo-a").exit_code == 2
    assert k("compare", "ppo-a", "nope").exit_code == 3


def test_export_writes_the_master_csv_with_stable_columns(three_runs: Kexp, tmp_path: Path) -> None:
    k = three_runs
    target = tmp_path / "results.csv"
    k.ok("export", str(target))
    rows = list(csv.DictReader(target.open()))
    assert [r["name"] for r in rows] == ["ppo-a", "ppo-b", "sac-c"]
    header = next(csv.reader(target.open()))
    assert header[:4] == ["namespace", "name", "phase", "reason"]
    assert header.index("hp.learningRate") < header.index("result.reward")
    by_name = {r["name"]: r for r in rows}
    assert float(by_name["ppo-b"]["result.reward"]) == 350.0
    assert float(by_name["ppo-b"]["score"]) == 350.0
    assert by_name["sac-c"]["phase"] == "Failed"
    assert by_name["sac-c"]["score"] == ""
    # Exporting again gives the same file; an existing file needs --force.
    again = k("export", str(target))
    assert again.exit_code == 1
    assert "--force" in again.output
    first = target.read_text()
    k.ok("export", str(target), "--force")
    assert target.read_text() == first
    picked = k.ok("export", "-", "--columns", "name,score,result.*", "--phase", "Succeeded")
    assert picked.stdout.splitlines()[0] == "name,score,result.reward,result.reward_std"
    bad = k("export", "-", "--columns", "name,nope")
    assert bad.exit_code == 2
    assert "no column 'nope'" in bad.output
    assert k("export", "-", "--tag", "zzz").exit_code == 4


# ---- report / plot / harvest / logs ---------------------------------------------------------
def test_report_and_plot_from_the_runs_metrics(three_runs: Kexp, tmp_path: Path) -> None:
    k = three_runs
    report = k.ok("report", "ppo-a").stdout
    assert report.startswith("# Experiment `ppo-a`")
    assert "## Progress by step" in report
    assert "| step | episode_reward |" in report
    assert "checkpoints/best.pt` (step 1000)" in report
    assert "| reward | 200 | objective |" in report
    assert "- [x] config hash" in report
    assert "## Recommendations" in report
    no_metrics = k.ok("report", "ppo-b").stdout
    assert "metrics.csv" in no_metrics
    assert "yet" in no_metrics
    png = tmp_path / "curves.png"
    k.ok("plot", "ppo-a", "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000
    missing = k("plot", "ppo-b", "-o", str(tmp_path / "b.png"))
    assert missing.exit_code == 3
    assert "metrics.csv" in missing.output
    bad_metric = k("plot", "ppo-a", "--metric", "nope", "-o", str(tmp_path / "c.png"))
    assert bad_metric.exit_code == 2
    assert "no column 'nope'" in bad_metric.output
    assert k("plot", "ppo-a", "-o", str(tmp_path / "c.txt")).exit_code == 2


def test_read_commands_change_nothing(three_runs: Kexp, tmp_path: Path) -> None:
    k = three_runs
    before = {n: k.get(n)["metadata"]["resourceVersion"] for n in ("ppo-a", "ppo-b", "sac-c")}
    k.ok("list")
    k.ok("show", "ppo-a")
    k.ok("compare", "ppo-a", "ppo-b", "sac-c")
    k.ok("export", str(tmp_path / "x.csv"))
    k.ok("report", "ppo-a")
    after = {n: k.get(n)["metadata"]["resourceVersion"] for n in before}
    assert after == before


def test_harvest_again_replaces_scores_and_refuses_bad_files(three_runs: Kexp) -> None:
    k = three_runs
    k.results("ppo-a", {"reward": 250.0, "success_rate": 0.9})
    out = k.ok("harvest", "ppo-a")
    assert "success_rate" in out.stdout
    status = k.get("ppo-a")["status"]
    assert status["results"] == {"reward": 250.0, "success_rate": 0.9}  # reward_std removed
    assert status["score"] == 250.0
    harvested = next(c for c in status["conditions"] if c["type"] == "Harvested")
    assert harvested["status"] == "True"
    assert "kexp harvest" in harvested["message"]
    k.ok("harvest", "ppo-a")  # twice is harmless
    assert k.get("ppo-a")["status"]["results"] == status["results"]

    k.put("ppo-a", contract.RESULTS_FILE, "{not json")
    rv = k.get("ppo-a")["metadata"]["resourceVersion"]
    bad = k("harvest", "ppo-a")
    assert bad.exit_code == 1
    assert "results.json is malformed" in bad.output
    assert k.get("ppo-a")["metadata"]["resourceVersion"] == rv  # nothing written
    assert k("harvest", "nope").exit_code == 3


def test_a_trainer_failure_in_results_json_fails_the_run_with_its_reason(kexp: Kexp) -> None:
    _run(kexp, "bad-env", run_for="4s")
    kexp.results(
        "bad-env",
        {},
        outcome="failed",
        error="unknown environment id 'Nope-v0'",
        error_field="spec.environment.id",
    )
    status = kexp.wait_phase("bad-env", "Failed")
    assert status["reason"] == "TrainerFailed"
    assert "unknown environment id 'Nope-v0' (spec.environment.id)" in status["message"]
    report = kexp.ok("report", "bad-env").stdout
    assert "Failed (TrainerFailed)" in report


def test_logs_of_an_experiment_without_pods(kexp: Kexp) -> None:
    kexp.ok(
        "new", "waits", "--no-source", "--set", "algorithm=PPO",
        "--set", "environment.id=CartPole-v1", "--set", "training.totalSteps=10",
        "--set", "initFrom.experiment=never-created", "--apply",
    )  # fmt: skip
    kexp.wait_phase("waits", "Waiting")
    result = kexp("logs", "waits")
    assert result.exit_code == 3
    assert "has no trainer pods (phase Waiting)" in result.output


# ---- custom evaluators: scores from a CSV ---------------------------------------------------
def test_custom_evaluator_csv_is_harvested_by_column_mapping(kexp: Kexp) -> None:
    _run(
        kexp,
        "navsim",
        "algorithm=Custom",
        "trainer.image=registry.example.org/lab/planner:1",
        "evaluation.resultsCsv.path=eval/scenarios.csv",
        "evaluation.resultsCsv.columns.pdm_score=PDMS",
        "evaluation.resultsCsv.columns.collision_rate=NC",
        run_for="5s",
    )
    # A NAVSIM-style per-scenario table; no results.json at all.
    kexp.put("navsim", "eval/scenarios.csv", "token,PDMS,NC\na,0.9,0.0\nb,0.7,1.0\nc,,0.5\n")
    status = kexp.wait_phase("navsim", "Succeeded")
    wait_until(
        lambda: kexp.get("navsim")["status"].get("results"), what="navsim's results harvested"
    )
    status = kexp.get("navsim")["status"]
    assert status["results"] == {"pdm_score": pytest.approx(0.8), "collision_rate": 0.5}
    assert status["score"] == pytest.approx(0.8)


def test_a_csv_without_the_mapped_column_is_reported(kexp: Kexp) -> None:
    _run(
        kexp,
        "navsim-bad",
        "algorithm=Custom",
        "trainer.image=registry.example.org/lab/planner:1",
        "evaluation.resultsCsv.columns.pdm_score=PDMS",
        run_for="5s",
    )
    kexp.put("navsim-bad", "results.csv", "token,score\na,0.9\n")
    kexp.wait_phase("navsim-bad", "Succeeded")
    harvested = wait_until(
        lambda: next(
            (c for c in kexp.get("navsim-bad")["status"]["conditions"] if c["type"] == "Harvested"),
            None,
        ),
        what="a Harvested condition",
    )
    assert harvested["status"] == "False"
    assert "no column 'PDMS' (spec.evaluation.resultsCsv.columns.pdm_score)" in harvested["message"]


# ---- chains ---------------------------------------------------------------------------------
def test_cimrl_chain_bc_then_rl_points_at_the_bc_checkpoint(kexp: Kexp) -> None:
    """The shipped example: BC warm-up, then RL with initFrom, both from `kexp submit`."""
    kexp.ok("submit", str(REPO / "examples/templates/bc-highway.yaml"), "--no-source")
    kexp.ok("submit", str(REPO / "examples/templates/cimrl-highway.yaml"), "--no-source")
    chain = yaml.safe_load_all((REPO / "examples/experiments/cimrl-chain.yaml").read_text())
    docs = []
    for doc in chain:
        # Simulated pods on the kwok GPU nodes; the BC run lasts long enough to add results.
        doc["metadata"]["annotations"] = {"sim.kexp.io/run-for": "5s"}
        docs.append(doc)
    kexp.ok("submit", "-", "--no-source", input=yaml.safe_dump_all(docs))
    kexp.wait_phase("cimrl-rl", "Waiting")
    kexp.results("cimrl-bc", {"pdm_score": 0.71})
    bc = kexp.wait_phase("cimrl-bc", "Succeeded")
    rl = kexp.wait_phase("cimrl-rl", "Succeeded", timeout_s=60)
    assert bc["checkpoints"]["best"].endswith("/checkpoints/best.pt")
    assert rl["provenance"]["initFromCheckpoint"] == bc["checkpoints"]["best"]
    job = kexp.batch.read_namespaced_job("cimrl-rl-train", kexp.ns)
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert env[contract.ENV_INIT_CHECKPOINT] == bc["checkpoints"]["best"]
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(kexp.ok("export", "-").stdout))}
    assert rows["cimrl-rl"]["init_from"] == "cimrl-bc"
    assert rows["cimrl-rl"]["init_from_checkpoint"] == bc["checkpoints"]["best"]


# ---- the whole chain ------------------------------------------------------------------------
@pytest.mark.slow
def test_new_to_operator_to_real_training_to_exported_scores(kexp: Kexp) -> None:
    """CLI new -> operator -> Job -> the real trainer (`kexp dev run-trainer`: the pod's
    command as a process, as kwok nodes run no containers) -> MinIO -> harvest -> a `kexp
    export` row with the scores, and the trainer's output as the pod's log."""
    kexp.ok("submit", str(REPO / "examples/templates/cartpole-smoke.yaml"), "--no-source")
    kexp.ok(
        "new", "e2e", "--no-source", "-t", "cartpole-smoke",
        "--annotation", "sim.kexp.io/run-for=45s",
        "--set", "training.totalSteps=4096", "--set", "hyperparameters.learningRate=1e-3",
        "--tag", "e2e", "--apply",
    )  # fmt: skip
    kexp.wait_phase("e2e", "Running")
    trained = kexp(
        "dev", "run-trainer", "--state-dir", str(kexp.stack.state_dir), "-n", kexp.ns, "e2e"
    )
    assert trained.exit_code == 0, trained.output[-3000:]
    assert "evaluation over 10 episodes" in trained.stdout
    wait_until(
        lambda: kexp.get("e2e").get("status", {}).get("results"),
        timeout_s=90,
        what="e2e's results harvested",
    )
    rows = list(csv.DictReader(io.StringIO(kexp.ok("export", "-", "--tag", "e2e").stdout)))
    assert len(rows) == 1
    row = rows[0]
    assert row["phase"] == "Succeeded"
    assert float(row["result.reward"]) > 9  # CartPole: a random policy gets ~20; any run > 9
    assert row["score"] == row["result.reward"]  # the template's objective is reward
    assert row["hp.learningRate"] == "0.001"
    assert row["train.totalSteps"] == "4096"
    assert row["best_checkpoint"].endswith("/checkpoints/best.pt")
    assert row["git_commit"] == ""  # --no-source: nothing claimed
    report = kexp.ok("report", "e2e").stdout
    assert "| step | episode_reward |" in report
    logs = kexp.ok("logs", "e2e", "--tail", "2").stdout.splitlines()
    assert len(logs) == 2
    # The evaluation is the trainer's last line unless Prometheus missed the final scrape,
    # which the trainer reports after it (seen under CI load).
    evaluation = "evaluation over 10 episodes: episodes 10, reward"
    assert evaluation in logs[-1] or (
        evaluation in logs[-2] and "no scrape after the final values" in logs[-1]
    ), logs
