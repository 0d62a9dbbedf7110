"""``streamrec recommend USER``: ask the inference service for a user's recommendations and print a table."""

from __future__ import annotations

import argparse
import sys

import grpc

from services.common.errors import ConfigError
from services.common.grpc import open_channel
from services.common.tls import add_cli_arguments, cli_tls
from streamrec_proto.v1 import recommender_pb2, recommender_pb2_grpc


def format_table(response: recommender_pb2.RecommendResponse) -> str:
    rows = [(str(n), it.item_id, it.title, f"{it.score:.4f}") for n, it in enumerate(response.items, 1)]
    head = ("#", "item", "title", "score")
    widths = [max([len(head[c])] + [len(r[c]) for r in rows]) for c in range(4)]
    widths[2] = min(widths[2], 60)
    fmt = lambda r: "  ".join(v[:widths[c]].ljust(widths[c]) if c < 3 else v.rjust(widths[c]) for c, v in enumerate(r))  # noqa: E731
    version = f"{response.model_name} v{response.model_version}" if response.model_version else "no model"
    lines = [fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(r) for r in rows),
             f"({len(rows)} items from {response.source or 'model'}; {version})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamrec recommend", description="print a user's recommendations")
    p.add_argument("user", help="user id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--target", default="127.0.0.1:50052", help="inference service host:port")
    p.add_argument("--category", action="append", default=[], help="only items in this category (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="never return this item (repeatable)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds")
    add_cli_arguments(p, identity="app")
    args = p.parse_args(argv)
    try:
        tls = cli_tls(args)
    except ConfigError as exc:
        print(f"streamrec recommend: {exc}", file=sys.stderr)
        return 2
    with open_channel(args.target, tls) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        try:
            response = stub.Recommend(recommender_pb2.RecommendRequest(
                user_id=args.user, k=args.k, categories=args.category, exclude_item_ids=args.exclude), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"streamrec recommend: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(format_table(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
