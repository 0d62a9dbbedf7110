"""Transport security for every gRPC surface: TLS, mutual TLS, who is calling, and a local CA.

A process has one identity: a certificate and key signed by the deployment's CA (``TlsConfig``).
It serves with it and calls other services with it. A caller's identity is the Common Name of the
client certificate it proved it holds during the TLS handshake (``trainer``, ``inference``,
``operator``...); servers that take tokens instead (Recommend for apps) accept a bearer token from
a file. ``AccessPolicy`` says which identities may call which method; ``ErrorInterceptor``
(services.common.grpc) applies it, so refusals come out of the one error family.

Plaintext is possible only by asking for it by name (``tls.plaintext: true``), and every process
that runs so says so in its log.

``LocalCA`` (``cryptography``) makes a CA and one certificate per identity for the local stack
and for tests; in Kubernetes the certificates come from Secrets or cert-manager instead.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Literal, Mapping

import grpc
from pydantic import Field

from services.common.config import Section
from services.common.errors import ConfigError, PermissionDenied, Unauthenticated

logger = logging.getLogger(__name__)

ANY_CALLER = "*"
# Health and reflection answer anyone who completed the handshake: probes and tools carry no token.
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


class TlsConfig(Section):
    """This process's identity on gRPC: the CA it trusts, its certificate and key.

    The same files serve (server side) and call (client side). PEM files, as a Kubernetes TLS
    Secret or cert-manager mounts them (``ca.crt``, ``tls.crt``, ``tls.key``).
    """

    # Off only when asked for by name; the process logs a warning (anyone on the network may call).
    plaintext: bool = False
    ca_file: str = Field("", description="PEM CA bundle that signs peers' certificates")
    cert_file: str = Field("", description="PEM certificate chain of this process")
    key_file: str = Field("", description="PEM private key of this process")
    # Server side: "require" = mutual TLS (callers must present a certificate signed by ca_file);
    # "none" = TLS only, callers authenticate with a bearer token from tokens_file (apps on Recommend).
    client_auth: Literal["require", "none"] = "require"
    # Server side, client_auth "none": a file with one accepted bearer token per line (a mounted Secret).
    tokens_file: str = ""
    # Client side: the name the server's certificate must carry when the target's host is not in it.
    server_name: str = ""
    # Client side: a file holding the bearer token to send (apps calling Recommend without a certificate).
    token_file: str = ""

    def files(self, need_identity: bool = True) -> tuple[bytes, bytes | None, bytes | None]:
        """(ca, cert, key) PEM bytes; ConfigError naming the key when one is missing or unreadable.

        Without ``need_identity`` (an app that authenticates with a token) cert and key may be unset.
        """
        out: list[bytes | None] = []
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if not path and not need_identity and key != "ca_file":
                out.append(None)
                continue
            if not path:
                raise ConfigError(f"tls.{key} is not set: give this process a certificate "
                                  "(or set tls.plaintext: true to run without TLS)")
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise ConfigError(f"tls.{key}: cannot read {path}: {exc.strerror}") from exc
        return out[0], out[1], out[2]

    def tokens(self) -> list[bytes]:
        if not self.tokens_file:
            return []
        try:
            lines = Path(self.tokens_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"tls.tokens_file: cannot read {self.tokens_file}: {exc.strerror}") from exc
        return [line.strip().encode() for line in lines if line.strip()]

    def token(self) -> str:
        if not self.token_file:
            return ""
        try:
            return Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"tls.token_file: cannot read {self.token_file}: {exc.strerror}") from exc


def warn_plaintext(role: str, where: str) -> None:
    logger.warning("gRPC without TLS (tls.plaintext is set): traffic is readable and callers are not "
                   "authenticated", extra={"role": role, "address": where})


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    ca, cert, key = tls.files()
    if tls.client_auth == "none" and not tls.tokens_file:
        logger.warning("TLS without client authentication: any caller that can reach the port may call",
                       extra={"hint": "set tls.client_auth: require or tls.tokens_file"})
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=tls.client_auth == "require")


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    token = tls.token()
    ca, cert, key = tls.files(need_identity=not token)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return creds


def channel_options(tls: TlsConfig) -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name and not tls.plaintext else []


# -- who is calling ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    """An authenticated caller: ``identity`` is the certificate's Common Name, or ``token`` for a bearer token."""

    identity: str
    via: Literal["certificate", "token", "plaintext"]


def caller_of(context: grpc.ServicerContext, tokens: Collection[bytes] = ()) -> Caller | None:
    """The caller proven by this call's TLS handshake or bearer token; None when nothing proves it."""
    auth = context.auth_context() or {}
    names = auth.get("x509_common_name") or []
    if names and auth.get("transport_security_type") == [b"ssl"]:
        return Caller(names[0].decode("utf-8", "replace"), "certificate")
    if tokens:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and value.startswith("Bearer "):
                offered = hashlib.sha256(value[len("Bearer "):].strip().encode()).digest()
                if any(hmac.compare_digest(offered, hashlib.sha256(t).digest()) for t in tokens):
                    return Caller("token", "token")
    return None


class AccessPolicy:
    """Who may call which method: ``{method name: identities}``; ``ANY_CALLER`` = any authenticated caller.

    Methods not named are open to any authenticated caller when ``default`` is ``ANY_CALLER``.
    With ``plaintext`` nobody can be authenticated, so the policy lets everything through (warned
    about at start-up).
    """

    def __init__(self, rules: Mapping[str, Iterable[str]] | None = None, *, default: Iterable[str] = (ANY_CALLER,),
                 tokens: Collection[bytes] = (), plaintext: bool = False, require_caller: bool = True) -> None:
        self.rules = {m: frozenset(ids) for m, ids in (rules or {}).items()}
        self.default = frozenset(default)
        self.tokens = list(tokens)
        self.plaintext = plaintext
        self.require_caller = require_caller

    def check(self, full_method: str, context: grpc.ServicerContext) -> Caller | None:
        """Raise Unauthenticated / PermissionDenied unless the caller may call ``full_method``."""
        if self.plaintext:
            return Caller("anonymous", "plaintext")
        service, _, method = full_method.lstrip("/").rpartition("/")
        if service in OPEN_SERVICES:
            return None
        caller = caller_of(context, self.tokens)
        if caller is None:
            if not self.require_caller:
                return None
            raise Unauthenticated("this call needs a client certificate or a bearer token")
        allowed = self.rules.get(method, self.default)
        if ANY_CALLER not in allowed and caller.identity not in allowed:
            raise PermissionDenied(f"{caller.identity!r} may not call {method} "
                                   f"(allowed: {', '.join(sorted(allowed)) or 'nobody'})")
        return caller


# -- a local certificate authority -------------------------------------------------------------

class LocalCA:
    """A CA in a directory: ``ca.crt``/``ca.key`` plus ``<identity>.crt``/``<identity>.key`` per identity.

    EC P-256 keys; leaf certificates carry the identity as Common Name and ``localhost``,
    ``127.0.0.1`` and the identity as subject alternative names, so any of them can serve locally.
    """

    def __init__(self, directory: str | Path, name: str = "streamrec local CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        cert_path, key_path = self.directory / "ca.crt", self.directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            self._cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            self._key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5)).not_valid_after(now + _dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, _sha256())
        )
        _write_private(key_path, _key_pem(self._key))
        cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def paths(self, identity: str) -> tuple[Path, Path, Path]:
        return self.ca_file, self.directory / f"{identity}.crt", self.directory / f"{identity}.key"

    def tls_config(self, identity: str, **overrides) -> TlsConfig:
        """The ``tls`` section for a process that is ``identity`` (issued first if missing)."""
        ca, cert, key = self.paths(identity)
        if not (cert.exists() and key.exists()):
            self.issue(identity)
        return TlsConfig(ca_file=str(ca), cert_file=str(cert), key_file=str(key), **overrides)

    def issue(self, identity: str, *, hosts: Iterable[str] = ("localhost", "127.0.0.1"), days: float = 825,
              not_before: _dt.datetime | None = None, file_stem: str | None = None) -> tuple[Path, Path]:
        """Sign a certificate for ``identity``; returns (cert path, key path)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or (_now() - _dt.timedelta(minutes=5))
        sans: list[x509.GeneralName] = []
        for host in (*hosts, identity):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(self._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, _sha256())
        )
        stem = file_stem or identity
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def local_credentials(directory: str | Path, identity: str) -> TlsConfig | None:
    """The ``tls`` section for ``identity`` from a LocalCA directory, or None when it holds none."""
    directory = Path(directory)
    ca, cert, key = directory / "ca.crt", directory / f"{identity}.crt", directory / f"{identity}.key"
    if ca.is_file() and cert.is_file() and key.is_file():
        return TlsConfig(ca_file=str(ca), cert_file=str(cert), key_file=str(key))
    return None


# -- command-line tools ---------------------------------------------------------------------------

DEFAULT_LOCAL_DIR = Path(".streamrec") / "tls"
TLS_DIR_ENV = "STREAMREC_TLS_DIR"


def add_cli_arguments(parser, identity: str) -> None:
    """``--tls-dir``, ``--identity`` and ``--plaintext`` for a command that calls a streamrec service."""
    parser.add_argument("--tls-dir", default=None,
                        help=f"directory with ca.crt and <identity>.crt/.key (env {TLS_DIR_ENV}; "
                             f"default {DEFAULT_LOCAL_DIR}, where `streamrec up` puts them)")
    parser.add_argument("--identity", default=identity, help=f"whose certificate to use (default {identity})")
    parser.add_argument("--server-name", default="",
                        help="name in the server's certificate, when it is not the target's host (e.g. via port-forward)")
    parser.add_argument("--plaintext", action="store_true", help="connect without TLS (servers must allow it)")


def cli_tls(args, environ: Mapping[str, str] | None = None) -> TlsConfig:
    """The credentials a command-line tool calls with: ``--plaintext``, else the identity's files in the TLS dir."""
    if args.plaintext:
        return TlsConfig(plaintext=True)
    environ = os.environ if environ is None else environ
    directory = Path(args.tls_dir or environ.get(TLS_DIR_ENV) or DEFAULT_LOCAL_DIR)
    found = local_credentials(directory, args.identity)
    if found is None:
        raise ConfigError(f"no credentials for {args.identity!r} in {directory} (want ca.crt, {args.identity}.crt, "
                          f"{args.identity}.key): run this where `streamrec up` runs, or pass --tls-dir")
    server_name = getattr(args, "server_name", "")  # only the commands that call a gRPC server have it
    return found.model_copy(update={"server_name": server_name}) if server_name else found
