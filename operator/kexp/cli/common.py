"""What every cluster command shares: connection options, output formats, errors, colour.

Exit codes are part of the interface scripts rely on:

- 0: done;
- 1: failed (the API server or S3 refused, a file could not be written, ...);
- 2: bad usage (an unknown option, a malformed ``--set``; click's own convention);
- 3: not found (an experiment, template or file named on the command line);
- 4: nothing matched the filters (``list`` and ``export`` with filters that select nothing).

Errors are one line on stderr, starting with ``error:``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click
import yaml

from kexp.kube.cluster import Cluster, ClusterError

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_NO_MATCH: Final = 4

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error to print as one line, with the exit code it deserves."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(" ".join(message.split("\n")))
        self.exit_code = code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise CliError(message, code)


@dataclass
class Session:
    """The connection a command uses, made on first need (so ``--help`` never connects)."""

    kubeconfig: Path | None = None
    context: str | None = None
    namespace_flag: str | None = None
    _cluster: Cluster | None = field(default=None, repr=False)

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            try:
                self._cluster = Cluster.connect(self.kubeconfig, self.context)
            except ClusterError as exc:
                fail(str(exc))
        return self._cluster

    @property
    def namespace(self) -> str:
        return self.namespace_flag or self.cluster.namespace


def cluster_options(func: F) -> F:
    """``--kubeconfig``, ``--context`` and ``-n/--namespace``, as kubectl spells them."""

    @click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="KUBECONFIG",
        default=None,
        help="Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).",
    )
    @click.option("--context", default=None, help="Kubeconfig context (default: the current).")
    @click.option(
        "-n", "--namespace", default=None, help="Namespace (default: the context's namespace)."
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, kubeconfig: Path | None, context: str | None, namespace: str | None, **kw: Any
    ) -> Any:
        if kubeconfig is not None and os.pathsep in str(kubeconfig):
            kubeconfig = Path(str(kubeconfig).split(os.pathsep)[0])
        session = Session(kubeconfig=kubeconfig, context=context, namespace_flag=namespace)
        try:
            return func(*args, session=session, **kw)
        except ClusterError as exc:
            code = EXIT_NOT_FOUND if exc.status == 404 else EXIT_FAILED
            raise CliError(str(exc), code) from None

    return wrapper  # type: ignore[return-value]


# ---- output ---------------------------------------------------------------------------------
def use_colour() -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (no-color.org)."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


PHASE_COLOURS: Final = {
    "Succeeded": "green",
    "Failed": "red",
    "Running": "cyan",
    "Evaluating": "cyan",
    "Waiting": "yellow",
    "Pending": "yellow",
}


def style_phase(phase: str) -> str:
    colour = PHASE_COLOURS.get(phase)
    return click.style(phase, fg=colour) if colour and use_colour() else phase


def fmt(value: Any, digits: int = 4) -> str:
    """A value as a table cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int | None = None,
    shrink: Sequence[int] = (),
) -> str:
    """Left-aligned columns two spaces apart, like kubectl. On a terminal, columns in
    ``shrink`` are cut (with an ellipsis) to fit its width; piped output is never cut."""
    if width is None:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 1 << 30
    widths = [len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(click.unstyle(cell)))
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    for i in shrink:
        if excess <= 0:
            break
        cut = min(excess, widths[i] - max(8, len(header[i])))
        if cut > 0:
            widths[i] -= cut
            excess -= cut

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            plain = click.unstyle(cell)
            if len(plain) > widths[i]:
                cell = plain[: widths[i] - 1] + "…"
                plain = cell
            parts.append(cell + " " * (widths[i] - len(plain)))
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


OUTPUT_FORMATS: Final = ("table", "wide", "json", "yaml", "csv", "name")


def output_option(
    default: str = "table", choices: Sequence[str] = OUTPUT_FORMATS
) -> Callable[[F], F]:
    option: Callable[[F], F] = click.option(
        "-o",
        "--output",
        type=click.Choice(list(choices)),
        default=default,
        show_default=True,
        help="Output format: a table for people, or json/yaml/csv for scripts.",
    )
    return option


def dump(data: Any, output: str) -> str:
    """json or yaml text of plain data."""
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    return yaml.safe_dump(data, sort_keys=False)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV with a header; missing cells empty; booleans and floats as Python writes them."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def write_new_file(path: Path, text: str | bytes, *, force: bool) -> None:
    """Write ``path`` atomically; an existing file is only replaced with ``force``."""
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to replace it", EXIT_FAILED)
    if not path.parent.is_dir():
        fail(f"{path.parent} is not a directory", EXIT_FAILED)
    tmp = path.with_name(f".{path.name}.kexp-tmp")
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fail(f"cannot write {path}: {exc.strerror or exc}")
