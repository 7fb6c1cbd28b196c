"""``kexp-operator``: run the operator (the same as ``kopf run -m kexp.handlers``).

    kexp-operator --all-namespaces
    kexp-operator --namespace research --namespace 'team-*'

Environment: ``KEXP_TRAINER_IMAGE`` (default trainer image), ``KEXP_OPERATOR_METRICS_PORT``
(Prometheus metrics, default 8080; 0 turns them off), ``KUBECONFIG`` outside a cluster.
"""

from __future__ import annotations

import argparse
import logging

import kopf

import kexp.handlers  # noqa: F401 - registers the handlers


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the operator until it is stopped."""
    parser = argparse.ArgumentParser(prog="kexp-operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace.")
    scope.add_argument(
        "-n", "--namespace", action="append", help="Watch this namespace or glob (repeatable)."
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="Liveness endpoint for probes (default: %(default)s; 'off': none).",
    )
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handler call at INFO; at thousands of events that is most of the
        # operator's output (and I/O). Warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        clusterwide=bool(args.all_namespaces),
        namespaces=args.namespace or [],
        # kopf reads port 0 as "no port given", i.e. 80; 'off' is how to run several at once.
        liveness_endpoint=None if args.liveness in ("", "off") else args.liveness,
    )


if __name__ == "__main__":
    main()
