"""`pdserve operator`: run the LLMService operator (kopf, standalone, in-process)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from pdserve.controller.kube import Kube
from pdserve.controller.kv_health import DEFAULT_INTERVAL_SECONDS as KV_HEALTH_INTERVAL_SECONDS
from pdserve.planning.recommend import DEFAULT_INTERVAL_SECONDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdserve operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[],
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (the default)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then "
                        "$KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--liveness", "--health-port", dest="liveness", type=int, default=8080,
                        metavar="PORT", help="serve GET /healthz on this port (0: off)")
    parser.add_argument("--metrics-port", type=int, default=8081, metavar="PORT",
                        help="serve Prometheus /metrics on this port (0: off)")
    parser.add_argument("--recommendation-interval", type=float,
                        default=DEFAULT_INTERVAL_SECONDS, metavar="SECONDS",
                        help="how often status.recommendation is planned for each autoscaling "
                        f"LLMService (default {DEFAULT_INTERVAL_SECONDS:g})")
    parser.add_argument("--kv-health-interval", type=float, default=KV_HEALTH_INTERVAL_SECONDS,
                        metavar="SECONDS",
                        help="how often each LLMService's KVTransferHealthy condition is judged, "
                        "over a window of two intervals (default "
                        f"{KV_HEALTH_INTERVAL_SECONDS:g})")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser


def _load_kube_config(kubeconfig: str | None) -> None:
    """The same credentials for our client and for kopf's (which reads $KUBECONFIG)."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


def _api_client() -> client.ApiClient:
    configuration = client.Configuration.get_default_copy()
    # Sync handlers run concurrently in kopf's thread pool; give each a connection.
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        # One line per handled event is too chatty with hundreds of LLMServices.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    for port in (args.liveness, args.metrics_port):
        if not 0 <= port <= 65535:
            print(f"pdserve operator: port {port} out of range", file=sys.stderr)
            return 2
    if not args.recommendation_interval >= 1:
        print("pdserve operator: --recommendation-interval must be at least 1 second",
              file=sys.stderr)
        return 2
    if not args.kv_health_interval >= 1:
        print("pdserve operator: --kv-health-interval must be at least 1 second",
              file=sys.stderr)
        return 2
    if args.kubeconfig and not os.path.isfile(args.kubeconfig):
        print(f"pdserve operator: no kubeconfig at {args.kubeconfig}", file=sys.stderr)
        return 2
    try:
        _load_kube_config(args.kubeconfig)
    except config.ConfigException as exc:
        print(f"pdserve operator: no Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    if args.kubeconfig:
        # kopf's default login goes through the kubernetes library, whose default kubeconfig
        # path was fixed at import; this one reads $KUBECONFIG, set above, when it logs in.
        kopf.on.login()(kopf.login_with_kubeconfig)
    import pdserve.controller.autoscaling  # registers the planner's kopf timer
    import pdserve.controller.handlers
    import pdserve.controller.kv_health_job  # registers its periodic job
    import pdserve.controller.recommendation  # noqa: F401  (registers its kopf timer)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness}/healthz" if args.liveness else None,
        memo=kopf.Memo(kube=Kube(_api_client()),
                       recommendation_interval_seconds=args.recommendation_interval,
                       kv_health_interval_seconds=args.kv_health_interval),
    )
    return 0
