"""``streamrec dev cluster up [--kubeconfig PATH]``: a Kubernetes API server on loopback for trying the chart.

Builds etcd and kube-apiserver from the Go module proxy the first time (a few minutes; cached under
~/.cache/streamrec/devcluster), starts both, writes a kubeconfig, waits for /readyz and runs until
Ctrl-C. No kubelets run: objects are admitted and stored, pods never start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from services.devcluster.build import ToolchainMissing, build_all
from services.devcluster.cluster import ClusterError, LocalKubeCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamrec dev cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build (once) and run etcd + kube-apiserver until Ctrl-C")
    up.add_argument("--kubeconfig", default=str(Path.home() / ".kube" / "streamrec-dev.yaml"),
                    help="where to write the kubeconfig (default: %(default)s)")
    up.add_argument("--work-dir", default=None, help="state directory (default: a temporary one, removed on exit)")
    sub.add_parser("build", help="only build etcd and kube-apiserver into the cache (CI does this before the tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "build":
        try:
            for binary in build_all():
                print(binary)
        except (ToolchainMissing, RuntimeError) as exc:
            print(f"streamrec dev cluster build: {exc}", file=sys.stderr)
            return 1
        return 0

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    cluster = LocalKubeCluster(args.work_dir, kubeconfig=args.kubeconfig)
    try:
        cluster.start()
    except (ToolchainMissing, ClusterError, RuntimeError) as exc:
        print(f"streamrec dev cluster up: {exc}", file=sys.stderr)
        return 1
    print(f"kube-apiserver ready at {cluster.server}\n"
          f"  export KUBECONFIG={cluster.kubeconfig}\n"
          "  (no kubelets: objects are admitted and stored, pods do not run)\nCtrl-C stops it.", flush=True)
    try:
        while not stop.wait(1.0):
            if (message := cluster.exited()) is not None:
                print(f"streamrec dev cluster up: {message}", file=sys.stderr)
                return 1
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
