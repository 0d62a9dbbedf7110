"""The thin gRPC layer over ModelRegistry: requests in, protos out; errors map in the interceptor.

``access_policy`` says which caller identities may call which method; the shared interceptor
enforces it before any handler here runs. Free text that ends up in announcements is capped here,
so no request can make a record Kafka would refuse.
"""

from __future__ import annotations

from typing import Callable

from services.common.errors import InvalidInput
from services.common.tls import ANY_CALLER, AccessPolicy, TlsConfig
from services.registry.config import AuthorizationConfig
from services.registry.deltas import DeltaRegistry
from services.registry.model_registry import ModelRegistry
from streamrec_proto.v1 import registry_pb2, registry_pb2_grpc

SERVICE_NAME = "streamrec.v1.ModelRegistry"
MAX_TRAINER_ID_CHARS = 200


def access_policy(auth: AuthorizationConfig, tls: TlsConfig) -> AccessPolicy:
    """Trainer registers, operator manages aliases and archives, inference downloads, anyone authenticated reads."""
    rules = {
        "RegisterVersion": auth.can_register, "RegisterDelta": auth.can_register,
        "SetAlias": auth.can_manage, "Rollback": auth.can_manage, "ArchiveVersion": auth.can_manage,
        "DownloadArtifact": auth.can_download, "DownloadDelta": auth.can_download,
        "GetVersion": [ANY_CALLER], "ListVersions": [ANY_CALLER], "GetAlias": [ANY_CALLER], "GetDelta": [ANY_CALLER],
    }
    # Methods added later are closed until someone decides who may call them.
    return AccessPolicy(rules, default=(), plaintext=tls.plaintext, tokens=())


def _chunks(requests):
    """The archive bytes after the header; a client cancelling mid-stream raises out of here."""
    for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise InvalidInput("only the first RegisterVersionRequest may carry a header")
        yield request.chunk


class ModelRegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, registry: ModelRegistry, deltas: DeltaRegistry, max_reason_chars: int = 1024,
                 parked: Callable[[str], list[registry_pb2.ParkedAnnouncement]] = lambda model: []) -> None:
        self.registry = registry
        self.deltas = deltas
        self.max_reason_chars = max_reason_chars
        self.parked = parked

    def _reason(self, reason: str) -> str:
        if len(reason) > self.max_reason_chars:
            raise InvalidInput(f"reason is {len(reason)} characters; at most {self.max_reason_chars} are allowed")
        return reason

    def RegisterVersion(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("RegisterVersion must start with a RegisterHeader")
        if len(first.header.trainer_id) > MAX_TRAINER_ID_CHARS:
            raise InvalidInput(f"header.trainer_id is longer than {MAX_TRAINER_ID_CHARS} characters")
        return self.registry.register(first.header, _chunks(request_iterator))

    def GetVersion(self, request, context):
        return self.registry.get_version(request.model_name, request.version)

    def ListVersions(self, request, context):
        return registry_pb2.ListVersionsResponse(
            versions=self.registry.list_versions(request.model_name, request.include_archived),
            parked=self.parked(request.model_name))

    def GetAlias(self, request, context):
        return self.registry.get_alias(request.model_name, request.alias)

    def SetAlias(self, request, context):
        return self.registry.set_alias(request.model_name, request.alias, request.version,
                                       self._reason(request.reason))

    def Rollback(self, request, context):
        return self.registry.rollback(request.model_name, self._reason(request.reason))

    def ArchiveVersion(self, request, context):
        return self.registry.archive(request.model_name, request.version)

    def DownloadArtifact(self, request, context):
        yield from self.registry.download(request.model_name, request.version)

    def RegisterDelta(self, request, context):
        return self.deltas.register_delta(request)

    def GetDelta(self, request, context):
        return self.deltas.get_delta(request.model_name, request.base_version, request.after_sequence,
                                     request.sequence, with_payload=False)

    def DownloadDelta(self, request, context):
        return self.deltas.get_delta(request.model_name, request.base_version, request.after_sequence,
                                     request.sequence, with_payload=True)
