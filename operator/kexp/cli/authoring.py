"""``kexp new`` and ``kexp submit``: write, dry-run and apply Experiments.

An Experiment is a record: ``submit`` creates it and never replaces one that exists (a
second submission of the identical spec is a no-op; a different spec under the same name is
refused). ``--dry-run`` shows the exact objects the operator would create, rendered by the
operator's own renderer and validated by the API server's dry run; nothing is stored.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from kexp.api import contract, models
from kexp.api.validation import validate_spec
from kexp.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Session,
    cluster_options,
    fail,
    write_new_file,
)
from kexp.cli.source import git_source
from kexp.kube.cluster import ClusterError
from kexp.render.resolved import ResolvedExperiment, init_checkpoint_uri
from kexp.render.settings import RenderSettings
from kexp.render.training import render_children

_NAME = re.compile(models.DNS_SUBDOMAIN_PATTERN)


def parse_value(raw: str) -> Any:
    """A ``--set`` value: a number when it reads as one (``1e-4`` included, which YAML 1.1
    would leave a string), else YAML (``true``, ``[32, 64]``, ``{a: 1}``), else the text."""
    for number in (int, float):
        try:
            value = number(raw)
        except ValueError:
            continue
        if value == value and value not in (float("inf"), float("-inf")):
            return value
    try:
        return yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    """``--set a.b=value`` pairs as a nested spec fragment; values are read as YAML scalars
    or flow collections (``1e-4``, ``true``, ``[32, 64]``)."""
    spec: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            fail(
                f"--set {item!r}: expected KEY=VALUE, e.g. hyperparameters.learningRate=1e-4",
                EXIT_USAGE,
            )
        value = parse_value(raw)
        node = spec
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                fail(f"--set {item!r}: {part!r} was already set to a value", EXIT_USAGE)
            node = child
        node[parts[-1]] = value
    return spec


def _check_name(name: str) -> None:
    if len(name) > 63 or not _NAME.match(name) or "." in name:
        fail(
            f"experiment name {name!r}: use lowercase letters, digits and '-', at most 63 "
            "characters, starting and ending with a letter or digit",
            EXIT_USAGE,
        )


def _template_spec(session: Session, namespace: str, ref: str) -> dict[str, Any]:
    found = session.cluster.get("ExperimentTemplate", namespace, ref)
    if found is None:
        names = sorted(
            t["metadata"]["name"]
            for t in session.cluster.list_objects("ExperimentTemplate", namespace)
        )
        fail(
            f"spec.templateRef: ExperimentTemplate {ref!r} not found in namespace "
            f"{namespace!r}; available: {', '.join(names) or 'none'}",
            EXIT_NOT_FOUND,
        )
    return dict(found.get("spec") or {})


def _copied_spec(session: Session, namespace: str, name: str) -> dict[str, Any]:
    """The spec of Experiment ``name``, as the user wrote it (no status, no provenance)."""
    found = session.cluster.get(models.EXPERIMENT_KIND, namespace, name)
    if found is None:
        fail(f"--from: Experiment {name!r} not found in namespace {namespace!r}", EXIT_NOT_FOUND)
    return copy.deepcopy(dict(found.get("spec") or {}))


def check_spec(
    session: Session,
    namespace: str,
    spec: dict[str, Any],
    local: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The spec resolved against its template and validated as the operator will.

    ``local``: template specs by name from the same file, used before the cluster's.
    """
    template: dict[str, Any] = {}
    ref = spec.get("templateRef")
    if ref and local and ref in local:
        template = local[ref]
    elif ref:
        template = _template_spec(session, namespace, str(ref))
    try:
        return validate_spec(models.merge_template(template, spec))
    except ValueError as exc:
        origin = f" (after merging template {spec['templateRef']!r})" if template else ""
        fail(f"invalid spec{origin}: {exc}")


def _with_source(manifest: dict[str, Any], directory: Path) -> None:
    spec = manifest.setdefault("spec", {})
    if spec.get("source"):
        return
    source = git_source(directory)
    if source is None:
        click.echo(f"note: {directory} is not a git work tree; spec.source left empty", err=True)
        return
    spec["source"] = source
    if source["dirty"]:
        click.echo(
            f"warning: the git tree at {directory} has uncommitted changes; the run records "
            f"commit {source['commit'][:12]} with dirty=true",
            err=True,
        )


def _source_options(func: Any) -> Any:
    func = click.option(
        "--source-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(),
        show_default=True,
        help="Git work tree whose commit, branch and dirtiness fill spec.source.",
    )(func)
    return click.option(
        "--no-source", is_flag=True, help="Do not fill spec.source from the local git tree."
    )(func)


# ---- apply and dry-run ----------------------------------------------------------------------
def _apply(session: Session, manifest: dict[str, Any]) -> str:
    """Create the object; 'created' or 'unchanged' (identical spec). Never replaces one."""
    kind = manifest.get("kind")
    meta = manifest.setdefault("metadata", {})
    meta.setdefault("namespace", session.namespace)
    try:
        session.cluster.create(manifest)
        return "created"
    except ClusterError as exc:
        if exc.status != 409:
            raise
    existing = session.cluster.get(str(kind), meta["namespace"], meta["name"]) or {}
    if existing.get("spec") == manifest.get("spec"):
        return "unchanged"
    what = "experiments are immutable records" if kind == "Experiment" else "not replaced"
    fail(
        f"{str(kind).lower()} {meta['name']!r} already exists in namespace "
        f"{meta['namespace']!r} with a different spec ({what}; choose a new name)",
    )


def plan_dry_run(
    session: Session, manifest: dict[str, Any], local: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The Experiment and the children the operator would create for it, each as the API
    server returned it from a dry-run create. Nothing is stored."""
    meta = manifest.setdefault("metadata", {})
    namespace = meta.setdefault("namespace", session.namespace)
    exp = session.cluster.create(manifest, dry_run=True)
    spec = check_spec(session, namespace, dict(manifest.get("spec") or {}), local)
    init_checkpoint = None
    init_from = spec.get("initFrom") or {}
    if init_from.get("experiment"):
        ref = session.cluster.get("Experiment", namespace, init_from["experiment"])
        if ref is None:
            click.echo(
                f"note: spec.initFrom.experiment {init_from['experiment']!r} does not exist "
                "yet; the operator waits for it and then fills KEXP_INIT_CHECKPOINT",
                err=True,
            )
            init_checkpoint = f"s3://<checkpoint of {init_from['experiment']}>"
        else:
            init_checkpoint = init_checkpoint_uri(namespace, init_from, ref)
    exp_meta = exp.get("metadata") or {}
    resolved = ResolvedExperiment(
        name=meta["name"],
        namespace=namespace,
        uid=str(exp_meta.get("uid") or "00000000-0000-0000-0000-000000000000"),
        spec=spec,
        annotations=dict(meta.get("annotations") or {}),
        init_checkpoint=init_checkpoint,
    )
    children = render_children(resolved, RenderSettings.from_env())
    return [exp, *(session.cluster.create(child, dry_run=True) for child in children)]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the rendered config.yaml) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def _print_documents(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        doc = copy.deepcopy(doc)
        doc.get("metadata", {}).pop("managedFields", None)
        click.echo("---")
        click.echo(yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False).rstrip())


@click.command()
@cluster_options
@click.argument("name")
@click.option("-t", "--template", default=None, help="ExperimentTemplate to start from.")
@click.option(
    "--from",
    "copy_from",
    default=None,
    metavar="EXPERIMENT",
    help="Start from a copy of this Experiment's spec (its source too with --no-source).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a spec field by its path (repeatable), e.g. hyperparameters.learningRate=1e-4.",
)
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
@click.option("-d", "--description", default=None, help="What this run tests.")
@click.option(
    "--annotation",
    "annotations",
    multiple=True,
    metavar="KEY=VALUE",
    help="Annotation on the Experiment (repeatable); sim.kexp.io/* ones reach its pods.",
)
@_source_options
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the manifest here instead of printing it.",
)
@click.option("--apply", "apply_", is_flag=True, help="Create it in the cluster.")
@click.option("--dry-run", is_flag=True, help="With --apply: show what would be created.")
@click.option("--force", is_flag=True, help="Replace --file if it exists.")
def new(
    session: Session,
    name: str,
    template: str | None,
    copy_from: str | None,
    sets: tuple[str, ...],
    tags: tuple[str, ...],
    description: str | None,
    annotations: tuple[str, ...],
    source_dir: Path,
    no_source: bool,
    path: Path | None,
    apply_: bool,
    dry_run: bool,
    force: bool,
) -> None:
    """Write (or --apply) a new Experiment NAME from a template and --set overrides.

    spec.source is filled from the local git tree (commit, branch, dirty), so the run always
    records which code it was meant to use. With --from, the copy's settings are the other
    Experiment's, with --set, --tag and --description applied over them.
    """
    _check_name(name)
    if dry_run and not apply_:
        fail("--dry-run goes with --apply (or use `kexp submit FILE --dry-run`)", EXIT_USAGE)
    if template and copy_from:
        fail("--from and --template: pick one (a copy keeps the templateRef it has)", EXIT_USAGE)
    spec = parse_set(sets)
    if copy_from:
        copied = _copied_spec(session, session.namespace, copy_from)
        if not no_source:
            copied.pop("source", None)  # filled again below, from the code run now
        spec = models.merge_template(copied, spec)
    if template:
        spec["templateRef"] = template
    if tags:
        spec["tags"] = list(dict.fromkeys([*(spec.get("tags") or []), *tags]))
    if description is not None:
        spec["description"] = description
    manifest: dict[str, Any] = {
        "apiVersion": models.API_VERSION,
        "kind": models.EXPERIMENT_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
    if copy_from:
        manifest["metadata"]["annotations"] = {contract.ANNOTATION_COPIED_FROM: copy_from}
    for item in annotations:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--annotation {item!r}: expected KEY=VALUE", EXIT_USAGE)
        manifest["metadata"].setdefault("annotations", {})[key] = value
    if session.namespace_flag:
        manifest["metadata"]["namespace"] = session.namespace_flag
    if not no_source:
        _with_source(manifest, source_dir)
    check_spec(session, session.namespace, manifest["spec"])
    text = yaml.safe_dump(manifest, sort_keys=False)
    if path is not None:
        write_new_file(path, text, force=force)
        click.echo(f"wrote {path}", err=True)
    if apply_:
        if dry_run:
            _print_documents(plan_dry_run(session, manifest))
            click.echo("server-side dry run: nothing was created", err=True)
        else:
            click.echo(f"experiment.kexp.io/{name} {_apply(session, manifest)}")
    elif path is None:
        click.echo(text, nl=False)


def load_documents(file: Path) -> list[dict[str, Any]]:
    """The kexp objects in a YAML file ('-': stdin); an error names the document at fault."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    except FileNotFoundError:
        fail(f"{file}: no such file", EXIT_NOT_FOUND)
    except OSError as exc:
        fail(f"{file}: {exc.strerror or exc}")
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        fail(f"{file}: not valid YAML: {str(exc).splitlines()[0]}", EXIT_USAGE)
    if not docs:
        fail(f"{file}: no objects in it", EXIT_USAGE)
    kinds = (models.EXPERIMENT_KIND, models.TEMPLATE_KIND)
    for i, doc in enumerate(docs, start=1):
        if not isinstance(doc, dict) or doc.get("kind") not in kinds:
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            fail(f"{file} document {i}: kind {kind!r} is not one of {', '.join(kinds)}", EXIT_USAGE)
        if doc.get("apiVersion") != models.API_VERSION:
            fail(
                f"{file} document {i}: apiVersion must be {models.API_VERSION}, "
                f"got {doc.get('apiVersion')!r}",
                EXIT_USAGE,
            )
        if not (doc.get("metadata") or {}).get("name"):
            fail(f"{file} document {i}: metadata.name is required", EXIT_USAGE)
    return docs


@click.command()
@cluster_options
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Print the Job/ConfigMap it would create; create nothing."
)
@_source_options
def submit(session: Session, file: Path, dry_run: bool, source_dir: Path, no_source: bool) -> None:
    """Submit the Experiments (and templates) in FILE ('-': stdin).

    Templates come first, so an Experiment in the same file can use one. An existing
    object with the identical spec is left as it is; a different one is never replaced.
    """
    docs = load_documents(file)
    docs.sort(key=lambda d: d["kind"] != models.TEMPLATE_KIND)
    experiments = [d for d in docs if d["kind"] == models.EXPERIMENT_KIND]
    if not no_source:
        for doc in experiments:
            _with_source(doc, source_dir)
    if dry_run:
        local = {
            d["metadata"]["name"]: dict(d.get("spec") or {})
            for d in docs
            if d["kind"] == models.TEMPLATE_KIND
        }
        for doc in docs:
            if doc["kind"] == models.TEMPLATE_KIND:
                session.cluster.create(doc, dry_run=True)
                click.echo(
                    f"# experimenttemplate.kexp.io/{doc['metadata']['name']} valid", err=True
                )
            else:
                _print_documents(plan_dry_run(session, doc, local))
        click.echo("server-side dry run: nothing was created", err=True)
        return
    for doc in docs:
        kind = "experimenttemplate" if doc["kind"] == models.TEMPLATE_KIND else "experiment"
        if doc["kind"] == models.EXPERIMENT_KIND:
            ns = (doc.get("metadata") or {}).get("namespace") or session.namespace
            check_spec(session, ns, dict(doc.get("spec") or {}))
        click.echo(f"{kind}.kexp.io/{doc['metadata']['name']} {_apply(session, doc)}")
