"""Entry point of ``kexp`` and of the kubectl plugin ``kubectl kexp`` (the same program).

The commands talk to the cluster of the current kubeconfig context, as kubectl does; see
``kexp.cli.common`` for the exit codes scripts can rely on.
"""

from __future__ import annotations

import click

from kexp.cli.authoring import new, submit
from kexp.cli.browse import compare_, export, list_, show
from kexp.cli.dev import dev
from kexp.cli.runs import harvest, logs, plot, report


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="kexp")
def cli() -> None:
    """kexp: run, track and compare ML training experiments on Kubernetes.

    \b
    Write and run:   new, submit
    Browse:          list, show, compare, export
    One run:         report, plot, logs, harvest
    Local stack:     dev
    """


for command in (new, submit, list_, show, compare_, export, report, plot, logs, harvest, dev):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point (``kexp`` and ``kubectl-kexp``)."""
    cli.main(prog_name="kexp")


if __name__ == "__main__":
    main()
