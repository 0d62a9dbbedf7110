"""Test credentials: one local CA per test process with a certificate per identity, as `streamrec up` makes.

Servers in tests run with TLS, mutual TLS and the registry's real access policy. ``tls_for`` gives
a process's ``tls`` section; ``registry_client`` gives a client that calls each registry method
as the identity allowed to call it (trainer registers versions and deltas, operator manages, inference
downloads artifacts and deltas), so tests that drive the whole life cycle stay short without
loosening the policy.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache

from services.common.tls import LocalCA, TlsConfig

IDENTITIES = ("registry", "inference", "trainer", "operator", "ingester", "app")


@lru_cache(maxsize=1)
def local_ca() -> LocalCA:
    ca = LocalCA(tempfile.mkdtemp(prefix="streamrec-test-pki-"), name="streamrec test CA")
    for identity in IDENTITIES:
        ca.issue(identity)
    return ca


def tls_for(identity: str, **overrides) -> TlsConfig:
    return local_ca().tls_config(identity, **overrides)


def tls_section(identity: str, **overrides) -> dict:
    """The ``tls:`` section of a service config, as a dict for ``model_validate``."""
    return tls_for(identity, **overrides).model_dump()


class LifecycleClient:
    """RegistryClient's methods, each sent as the identity the registry lets call it."""

    def __init__(self, target: str, **kwargs) -> None:
        from services.common.registry_client import RegistryClient

        self.target = target
        self.trainer = RegistryClient(target, tls=tls_for("trainer"), **kwargs)
        self.operator = RegistryClient(target, tls=tls_for("operator"), **kwargs)
        self.inference = RegistryClient(target, tls=tls_for("inference"), **kwargs)

    def __getattr__(self, name):
        if name in ("register", "register_archive", "register_delta"):
            return getattr(self.trainer, name)
        if name in ("download", "download_delta"):
            return getattr(self.inference, name)
        return getattr(self.operator, name)  # set_alias, rollback, archive and the reads

    def close(self) -> None:
        for client in (self.trainer, self.operator, self.inference):
            client.close()

    def __enter__(self) -> "LifecycleClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def registry_client(target: str, **kwargs) -> LifecycleClient:
    return LifecycleClient(target, **kwargs)
