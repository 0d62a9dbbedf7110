"""The gRPC face of the data plane: message conversion and deadlines, nothing else."""

from __future__ import annotations

from services.common.grpc import call_deadline
from services.inference.dataplane import Recommendation, RecommendQuery, RecommenderDataPlane, SimilarQuery
from streamrec_proto.v1 import recommender_pb2, recommender_pb2_grpc

SERVICE_NAME = "streamrec.v1.Recommender"


def _deadline(context) -> float | None:
    # The caller's deadline, or the server's default for calls that carry none.
    return call_deadline(context)


def _items(rec: Recommendation):
    return [recommender_pb2.ScoredItem(item_id=i.item_id, score=i.score, title=i.title, categories=list(i.categories))
            for i in rec.items]


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self, dataplane: RecommenderDataPlane) -> None:
        self.dataplane = dataplane

    def Recommend(self, request, context):
        rec = self.dataplane.recommend(RecommendQuery(
            user_id=request.user_id, k=request.k, context_item_ids=list(request.context_item_ids),
            exclude_item_ids=list(request.exclude_item_ids), categories=list(request.categories)), _deadline(context))
        return recommender_pb2.RecommendResponse(items=_items(rec), model_name=rec.model_name,
                                                 model_version=rec.model_version, source=rec.source,
                                                 model_delta=rec.model_delta)

    def SimilarItems(self, request, context):
        rec = self.dataplane.similar_items(SimilarQuery(
            item_id=request.item_id, k=request.k, exclude_item_ids=list(request.exclude_item_ids),
            categories=list(request.categories)), _deadline(context))
        return recommender_pb2.SimilarItemsResponse(items=_items(rec), model_name=rec.model_name,
                                                    model_version=rec.model_version, model_delta=rec.model_delta)

    def Ping(self, request, context):
        return recommender_pb2.PingResponse()

    def register(self, server) -> None:
        server.add(recommender_pb2_grpc.add_RecommenderServicer_to_server, self, SERVICE_NAME)
