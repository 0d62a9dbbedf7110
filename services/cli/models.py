"""``streamrec models``: list, show, promote, roll back or archive model versions over the registry's gRPC API.

    streamrec models list [--model recommender] [--all]
    streamrec models show VERSION|ALIAS [--model recommender] [--json]
    streamrec models promote VERSION [--alias production] [--reason TEXT]
    streamrec models rollback [--reason TEXT]
    streamrec models archive VERSION

The registry address comes from ``--registry`` or ``STREAMREC_REGISTRY_TARGET`` (default 127.0.0.1:50051).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import grpc
from google.protobuf.json_format import MessageToDict

from services.common.errors import ConfigError
from services.common.registry_client import RegistryClient
from services.common.tls import add_cli_arguments, cli_tls
from streamrec_proto.v1 import registry_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MODEL = "recommender"
# Metrics the trainer sends for the promotion gate (services/registry/gate.py): paired holdout evidence.
GATE_PREFIX = "gate."


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z" if ms else "-"


def _metrics(v: registry_pb2.ModelVersion, limit: int = 3) -> str:
    items = sorted((k, val) for k, val in v.metrics.items() if not k.startswith(GATE_PREFIX))[:limit]
    return " ".join(f"{k}={val:.4f}" for k, val in items) or "-"


def gate_evidence(v: registry_pb2.ModelVersion) -> str:
    """The paired holdout evidence the gate decided on: candidate vs production on the same n events."""
    m = v.metrics
    scores = sorted(k[len(GATE_PREFIX + "candidate_"):] for k in m if k.startswith(GATE_PREFIX + "candidate_hr@"))
    if not scores or GATE_PREFIX + "n" not in m:
        return "-"
    metric = scores[0]
    return (f"{metric} {m[GATE_PREFIX + 'candidate_' + metric]:.4f} vs "
            f"v{int(m.get(GATE_PREFIX + 'production_version', 0))} {m.get(GATE_PREFIX + 'production_' + metric, 0):.4f} "
            f"n={int(m[GATE_PREFIX + 'n'])} "
            f"diff=[{m.get(GATE_PREFIX + 'diff_lower', 0):+.4f},{m.get(GATE_PREFIX + 'diff_upper', 0):+.4f}]")


def format_table(versions: list[registry_pb2.ModelVersion]) -> str:
    header = ("VERSION", "STATE", "ALIASES", "GATE", "EVIDENCE", "METRICS", "CREATED", "TRAINER")
    rows = [header] + [(
        str(v.version), v.state, ",".join(v.aliases) or "-", v.gate_decision or "-", gate_evidence(v), _metrics(v),
        _when(v.created_at_ms), v.trainer_id or "-",
    ) for v in versions]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_version(v: registry_pb2.ModelVersion) -> str:
    lines = [
        f"model:        {v.model_name}",
        f"version:      {v.version}",
        f"state:        {v.state}",
        f"aliases:      {', '.join(v.aliases) or '-'}",
        f"created:      {_when(v.created_at_ms)}",
        f"registered:   {_when(v.registered_at_ms) if v.registered_at_ms else '-'}",
        f"trainer:      {v.trainer_id or '-'}",
        f"parent:       {v.parent_version or '-'}",
        f"artifact:     sha256:{v.artifact_sha256} ({v.artifact_size_bytes} bytes)",
        f"gate:         {v.gate_decision or '-'}{(' - ' + v.gate_reason) if v.gate_reason else ''}",
        f"evidence:     {gate_evidence(v)}",
        "metrics:" + ("" if v.metrics else "      -"),
    ]
    lines += [f"  {k:<22} {val:.6g}" for k, val in sorted(v.metrics.items())]
    lines.append("training offsets:" + ("" if v.training_offsets else " -"))
    lines += [f"  {o.topic}[{o.partition}] -> {o.offset}" for o in v.training_offsets]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", default=os.environ.get("STREAMREC_REGISTRY_TARGET", DEFAULT_TARGET),
                        help="registry gRPC address host:port (env STREAMREC_REGISTRY_TARGET)")
    common.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_cli_arguments(common, identity="operator")
    parser = argparse.ArgumentParser(prog="streamrec models", description="Manage model versions in the registry.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[common], help="list versions")
    p.add_argument("--all", action="store_true", help="include archived versions")
    p = sub.add_parser("show", parents=[common], help="show one version (a number or an alias)")
    p.add_argument("version", help="version number or alias, e.g. 7 or production")
    p = sub.add_parser("promote", parents=[common], help="point an alias (default production) at a version")
    p.add_argument("version", type=int)
    p.add_argument("--alias", default="production")
    p.add_argument("--reason", default="")
    p = sub.add_parser("rollback", parents=[common], help="re-point production to the previous good version")
    p.add_argument("--reason", default="")
    p = sub.add_parser("archive", parents=[common], help="archive a version (no alias may point at it)")
    p.add_argument("version", type=int)
    return parser


def _emit(args, versions: list[registry_pb2.ModelVersion], single: bool, prefix: str = "") -> None:
    if args.json:
        docs = [MessageToDict(v, preserving_proto_field_name=True) for v in versions]
        print(json.dumps(docs[0] if single else docs, indent=2))
    elif single:
        if prefix:
            print(prefix)
        print(format_version(versions[0]))
    else:
        print(format_table(versions) if versions else f"no versions of {args.model!r}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        tls = cli_tls(args)
    except ConfigError as exc:
        print(f"streamrec models: {exc}", file=sys.stderr)
        return 2
    client = RegistryClient(args.registry, timeout_s=args.timeout, tls=tls)
    try:
        if args.command == "list":
            _emit(args, client.list_versions(args.model, include_archived=args.all), single=False)
            for p in client.list_parked(args.model):  # on stderr, so --json output stays parseable
                print(f"parked announcement #{p.sequence} ({p.action} v{p.version}, {p.size_bytes} bytes) was never "
                      f"sent on model-versions: {p.reason}", file=sys.stderr)
        elif args.command == "show":
            v = (client.get_version(args.model, int(args.version)) if args.version.isdigit()
                 else client.get_alias(args.model, args.version))
            _emit(args, [v], single=True)
        elif args.command == "promote":
            v = client.set_alias(args.model, args.alias, args.version, args.reason)
            _emit(args, [v], single=True, prefix=f"{args.alias} -> {args.model} v{v.version}")
        elif args.command == "rollback":
            v = client.rollback(args.model, args.reason)
            _emit(args, [v], single=True, prefix=f"production rolled back -> {args.model} v{v.version}")
        elif args.command == "archive":
            v = client.archive(args.model, args.version)
            _emit(args, [v], single=True, prefix=f"archived {args.model} v{v.version}")
        return 0
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"streamrec models: registry at {args.registry} is unreachable ({exc.details()})", file=sys.stderr)
        else:
            print(f"streamrec models: {code.name.lower()}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
