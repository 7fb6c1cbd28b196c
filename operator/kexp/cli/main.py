"""Entry point of ``kexp`` / ``kubectl kexp``: one click group, one subgroup per area."""

from __future__ import annotations

import click

from kexp.cli.dev import dev


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kexp")
def cli() -> None:
    """kexp: run, track and compare ML training experiments on Kubernetes."""


cli.add_command(dev)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="kexp")


if __name__ == "__main__":
    main()
