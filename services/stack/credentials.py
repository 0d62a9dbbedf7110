"""Credentials of the local stack: a CA of its own and one certificate per identity, under ``<work dir>/tls``.

``streamrec up`` runs with TLS, mutual TLS and the registry's access policy switched on, like a
real deployment: each service proves who it is with its certificate, and the command-line tools
find theirs here (``operator`` for ``streamrec models``, ``app`` for ``streamrec recommend``).
"""

from __future__ import annotations

from pathlib import Path

from services.common.tls import LocalCA

# Services, plus the operator (streamrec models), an app (streamrec recommend, the demo stream's publisher) and
# the Kafka broker (its TLS listener).
IDENTITIES = ("registry", "inference", "trainer", "ingester", "operator", "app", "kafka")


def ensure_credentials(directory: str | Path, identities=IDENTITIES) -> LocalCA:
    """Create the CA and any missing certificate; existing ones are kept, so restarts keep trusting them."""
    ca = LocalCA(directory, name="streamrec local stack CA")
    for identity in identities:
        _, cert, key = ca.paths(identity)
        if not (cert.exists() and key.exists()):
            ca.issue(identity)
    return ca
