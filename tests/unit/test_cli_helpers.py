"""The CLI's pure helpers: --set parsing, manifest loading, tables, files, ages, git source."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kexp.cli.authoring import load_documents, parse_set, parse_value
from kexp.cli.browse import age
from kexp.cli.common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliError,
    csv_text,
    fmt,
    render_table,
    write_new_file,
)
from kexp.cli.source import git_source


# ---- parse_value / parse_set --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1e-4", 0.0001),
        ("0.5", 0.5),
        ("3", 3),
        ("-2", -2),
        ("true", True),
        ("false", False),
        ("[32, 64]", [32, 64]),
        ("{a: 1}", {"a": 1}),
        ("abc", "abc"),
        ("nan", "nan"),
        ("inf", "inf"),
        ("", ""),
        ("[unclosed", "[unclosed"),
    ],
)
def test_parse_value(raw: str, expected: Any) -> None:
    value = parse_value(raw)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_set_builds_a_nested_spec() -> None:
    spec = parse_set(
        (
            "hyperparameters.learningRate=1e-4",
            "hyperparameters.netArch=[32, 64]",
            "training.totalSteps=100000",
            "environment.id=highway-v0",
            "description=a=b",
        )
    )
    assert spec == {
        "hyperparameters": {"learningRate": 0.0001, "netArch": [32, 64]},
        "training": {"totalSteps": 100000},
        "environment": {"id": "highway-v0"},
        "description": "a=b",  # only the first '=' separates
    }


@pytest.mark.parametrize("item", ["noequals", "=1", "a..b=1", ".a=1", "a.=1"])
def test_parse_set_malformed_item(item: str) -> None:
    with pytest.raises(CliError) as info:
        parse_set((item,))
    assert info.value.exit_code == EXIT_USAGE == 2
    assert f"--set {item!r}: expected KEY=VALUE" in info.value.message


def test_parse_set_value_then_field_under_it() -> None:
    with pytest.raises(CliError) as info:
        parse_set(("training=5", "training.seed=1"))
    assert info.value.exit_code == 2
    assert "'training.seed=1'" in info.value.message
    assert "'training' was already set to a value" in info.value.message


# ---- load_documents -----------------------------------------------------------------------------
EXPERIMENT = """\
apiVersion: kexp.io/v1alpha1
kind: Experiment
metadata:
  name: ppo-1
spec:
  algorithm: ppo
"""
TEMPLATE = """\
apiVersion: kexp.io/v1alpha1
kind: ExperimentTemplate
metadata:
  name: base
spec: {}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_load_documents_reads_every_document(tmp_path: Path) -> None:
    path = _write(tmp_path, f"{TEMPLATE}---\n{EXPERIMENT}---\n")
    docs = load_documents(path)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ExperimentTemplate", "base"),
        ("Experiment", "ppo-1"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{EXPERIMENT}---\napiVersion: v1\nkind: Pod\n", "document 2: kind 'Pod' is not one of"),
        ("- a\n- b\n", "document 1: kind 'list' is not one of"),
        (
            EXPERIMENT.replace("kexp.io/v1alpha1", "kexp.io/v1"),
            "document 1: apiVersion must be kexp.io/v1alpha1, got 'kexp.io/v1'",
        ),
        (
            f"{EXPERIMENT}---\n{EXPERIMENT.replace('  name: ppo-1', '  labels: {}')}",
            "document 2: metadata.name is required",
        ),
        ("kind: [unclosed\n", "not valid YAML"),
        ("", "no objects in it"),
        ("---\n---\n", "no objects in it"),
    ],
)
def test_load_documents_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(CliError) as info:
        load_documents(path)
    assert info.value.exit_code == EXIT_USAGE
    assert message in info.value.message
    assert info.value.message.startswith(str(path))


def test_load_documents_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CliError) as info:
        load_documents(tmp_path / "nope.yaml")
    assert info.value.exit_code == EXIT_NOT_FOUND == 3
    assert info.value.message == f"{tmp_path / 'nope.yaml'}: no such file"


# ---- tables, csv, fmt ---------------------------------------------------------------------------
def test_render_table_aligns_columns_two_spaces_apart() -> None:
    text = render_table(["NAME", "PHASE"], [["a", "Running"], ["longer-name", "Failed"]], width=200)
    assert text.splitlines() == [
        "NAME         PHASE",
        "a            Running",
        "longer-name  Failed",
    ]


def test_render_table_shrinks_only_the_shrink_columns() -> None:
    header = ["NAME", "TAGS", "AGE"]
    rows = [["experiment-one", "x" * 30, "5d"]]
    text = render_table(header, rows, width=40, shrink=[1])
    lines = text.splitlines()
    # 14 + 30 + 3 + 2*2 = 51 wide: TAGS loses 11 characters, to 19.
    assert lines[1] == "experiment-one  " + "x" * 18 + "…  5d"
    assert lines[0] == "NAME            TAGS                 AGE"
    assert max(len(line) for line in lines) == 40


def test_render_table_never_cuts_below_eight_characters() -> None:
    rows = [["n", "y" * 20]]
    text = render_table(["N", "TAGS"], rows, width=5, shrink=[1])
    assert text.splitlines()[1] == "n  " + "y" * 7 + "…"


def test_render_table_wide_enough_is_not_cut() -> None:
    rows = [["experiment-one", "x" * 30]]
    text = render_table(["NAME", "TAGS"], rows, width=46, shrink=[1])
    assert text.splitlines()[1] == "experiment-one  " + "x" * 30


def test_csv_text() -> None:
    rows = [
        {"name": "a", "score": 0.5, "dirty": True, "extra": "ignored"},
        {"name": "b,c", "score": None},
    ]
    assert csv_text(["name", "score", "dirty"], rows) == (
        'name,score,dirty\r\na,0.5,True\r\n"b,c",,\r\n'
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, ""), (True, "true"), (False, "false"), (0.123456789, "0.1235"), (7, "7"), ("x", "x")],
)
def test_fmt(value: Any, expected: str) -> None:
    assert fmt(value) == expected


# ---- write_new_file -----------------------------------------------------------------------------
def test_write_new_file_creates(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    write_new_file(path, "a,b\n", force=False)
    assert path.read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temp file left


def test_write_new_file_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("keep me")
    with pytest.raises(CliError) as info:
        write_new_file(path, "new", force=False)
    assert info.value.exit_code == EXIT_FAILED
    assert info.value.message == f"{path} exists; pass --force to replace it"
    assert path.read_text() == "keep me"


def test_write_new_file_replaces_with_force(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_text("old")
    write_new_file(path, b"\x00new", force=True)
    assert path.read_bytes() == b"\x00new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_write_new_file_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="is not a directory"):
        write_new_file(tmp_path / "missing" / "out.csv", "x", force=False)


# ---- age ----------------------------------------------------------------------------------------
NOW = dt.datetime(2024, 5, 10, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2024-05-10T11:59:15Z", "45s"),
        ("2024-05-10T11:58:30Z", "1m"),
        ("2024-05-10T11:48:00Z", "12m"),
        ("2024-05-10T10:30:00Z", "90m"),
        ("2024-05-10T09:00:00Z", "3h"),
        ("2024-05-09T00:00:00Z", "36h"),
        ("2024-05-05T12:00:00Z", "5d"),
        ("2024-05-10T12:00:30Z", "0s"),  # a clock a little ahead
        ("2024-05-10T11:00:00+00:00", "60m"),
        (None, ""),
        ("", ""),
        ("yesterday", ""),
    ],
)
def test_age(timestamp: str | None, expected: str) -> None:
    assert age(timestamp, NOW) == expected


def test_age_of_a_timestamp_without_zone_does_not_crash() -> None:
    # Unparsable input gives ""; a timestamp with no zone parses but is naive, and
    # subtracting it from an aware `now` must not raise.
    assert age("2024-05-10T11:00:00", NOW) in ("", "60m")


# ---- git_source ---------------------------------------------------------------------------------
@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return tmp_path


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('hi')\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def test_git_source_of_a_clean_repo(git_env: Path) -> None:
    repo = _repo(git_env)
    source = git_source(repo)
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert source == {"commit": head, "revision": "main", "dirty": False}


def test_git_source_records_the_origin_remote(git_env: Path) -> None:
    repo = _repo(git_env)
    _git(repo, "remote", "add", "origin", "https://git.example/rl.git")
    source = git_source(repo)
    assert source is not None
    assert source["repository"] == "https://git.example/rl.git"


def test_git_source_untracked_file_is_dirty(git_env: Path) -> None:
    repo = _repo(git_env)
    (repo / "new_module.py").write_text("x = 1\n")
    source = git_source(repo)
    assert source is not None
    assert source["dirty"] is True
    assert source["commit"] == _git(repo, "rev-parse", "HEAD")


def test_git_source_modified_file_is_dirty(git_env: Path) -> None:
    repo = _repo(git_env)
    (repo / "train.py").write_text("print('changed')\n")
    source = git_source(repo)
    assert source is not None
    assert source["dirty"] is True


def test_git_source_detached_head_has_no_revision(git_env: Path) -> None:
    repo = _repo(git_env)
    _git(repo, "checkout", "-q", "--detach")
    source = git_source(repo)
    assert source is not None
    assert "revision" not in source
    assert source["commit"] == _git(repo, "rev-parse", "HEAD")


def test_git_source_not_a_repo(git_env: Path) -> None:
    plain = git_env / "plain"
    plain.mkdir()
    assert git_source(plain) is None


def test_git_source_repo_without_commits(git_env: Path) -> None:
    empty = git_env / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert git_source(empty) is None
