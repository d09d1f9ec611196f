"""``sharpml-operator``: the operator's entry point, a thin wrapper around ``kopf run``.

It loads the in-cluster service account or, outside a cluster, the current kubeconfig (KUBECONFIG),
then runs the handlers of :mod:`sharpml_operator.handlers` for SharpJobs in all namespaces (or the
ones named with ``--namespace``). Extra arguments after ``--`` go to ``kopf run`` unchanged.

Replicas: with ``--leader-election`` (the chart's default when replicas > 1) the process first wins
a coordination.k8s.io Lease (see :mod:`sharpml_operator.leader`); standby replicas wait and take
over when the leader stops renewing. Kopf's own peering is not used: replicas of equal priority
all freeze under it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kubernetes


def load_kube_config() -> None:
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sharpml-operator", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch only these namespaces")
    parser.add_argument("--leader-election", action="store_true", help="run only while holding the Lease")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    parser.add_argument("--lease-duration", type=int, default=15, help="seconds before a standby takes over")
    parser.add_argument(
        "--liveness", default="", help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    load_kube_config()
    if args.leader_election:
        from sharpml_operator import leader

        logging.basicConfig(level=logging.INFO, format="%(message)s")  # kopf sets up logging later

        # Blocks until this replica leads.
        leader.acquire_then_keep(args.lease_namespace, duration=args.lease_duration)
        for handler in logging.getLogger().handlers[:]:  # kopf installs its own from here on
            logging.getLogger().removeHandler(handler)
    from kopf.cli import main as kopf_main  # after the Lease: a standby never starts watching

    from sharpml_operator import scope

    scope.NAMESPACES = tuple(args.namespace)

    kopf_args = ["run", "--standalone", "-m", "sharpml_operator.handlers"]
    kopf_args += [f"--namespace={ns}" for ns in args.namespace] or ["--all-namespaces"]
    if args.liveness:
        kopf_args.append(f"--liveness={args.liveness}")
    if args.verbose:
        kopf_args.append("--verbose")
    try:
        kopf_main.main(args=kopf_args + extra, prog_name="sharpml-operator", standalone_mode=False)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
