"""The thin gRPC layer over ModelRegistry: requests in, protos out; errors map in the interceptor."""

from __future__ import annotations

from services.common.errors import InvalidInput
from services.registry.versions import ModelRegistry
from streamrec_proto.v1 import registry_pb2, registry_pb2_grpc

SERVICE_NAME = "streamrec.v1.ModelRegistry"


def _chunks(requests):
    """The archive bytes after the header; a client cancelling mid-stream raises out of here."""
    for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise InvalidInput("only the first RegisterVersionRequest may carry a header")
        yield request.chunk


class ModelRegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def RegisterVersion(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidInput("RegisterVersion must start with a RegisterHeader")
        return self.registry.register(first.header, _chunks(request_iterator))

    def GetVersion(self, request, context):
        return self.registry.get_version(request.model_name, request.version)

    def ListVersions(self, request, context):
        return registry_pb2.ListVersionsResponse(
            versions=self.registry.list_versions(request.model_name, request.include_archived))

    def GetAlias(self, request, context):
        return self.registry.get_alias(request.model_name, request.alias)

    def SetAlias(self, request, context):
        return self.registry.set_alias(request.model_name, request.alias, request.version, request.reason)

    def Rollback(self, request, context):
        return self.registry.rollback(request.model_name, request.reason)

    def ArchiveVersion(self, request, context):
        return self.registry.archive(request.model_name, request.version)

    def DownloadArtifact(self, request, context):
        yield from self.registry.download(request.model_name, request.version)
