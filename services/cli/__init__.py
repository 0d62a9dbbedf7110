"""The ``streamrec`` command line.

``commands`` holds the table of subcommands and dispatches to them; each subcommand that is not a
service lives beside it: ``models`` (model versions in the registry), ``publish`` (events and items
into Kafka), ``recommend`` (ask the inference service) and ``protogen`` (``streamrec dev gen-proto``).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run ``streamrec`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    # Imported here, not at the top: ``commands`` turns off gRPC's fork handlers for the process, which
    # only the command itself should do, not every importer of ``services.cli.publish`` and its siblings.
    from services.cli.commands import main as run

    return run(argv)
