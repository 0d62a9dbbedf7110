# syntax=docker/dockerfile:1.7
# streamrec CPU image: every service (`streamrec ingester|trainer|registry|inference`) and the CLI.
# The Helm chart's default image (ghcr.io/streamrec/streamrec:<appVersion>) is built from this file;
# Dockerfile.gpu builds the CUDA/TensorRT variant (<appVersion>-gpu) for the trainer and inference.
#
#   docker build -t ghcr.io/streamrec/streamrec:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# CPU wheels of torch: the default PyPI wheel drags in several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extras: postgres (PostgreSQL registry database), s3 (S3 artifact store).
ARG EXTRAS=postgres,s3
RUN python -m venv /opt/streamrec
ENV PATH=/opt/streamrec/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY recmodel/ recmodel/
COPY services/ services/
COPY streamrec_proto/ streamrec_proto/
COPY bench/ bench/
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" ".[${EXTRAS}]" \
    && python -m compileall -q /opt/streamrec/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="streamrec" \
      org.opencontainers.image.description="Streaming recommender: ingester, trainer, registry, inference" \
      org.opencontainers.image.source="https://github.com/streamrec/streamrec" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp: OpenMP runtime of torch/onnxruntime CPU kernels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
# Same uid/gid as the chart's podSecurityContext (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 streamrec \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/streamrec --create-home streamrec \
    && mkdir -p /var/lib/streamrec && chown 10001:10001 /var/lib/streamrec
COPY --from=build /opt/streamrec /opt/streamrec
ENV PATH=/opt/streamrec/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1
WORKDIR /home/streamrec
USER 10001:10001
# registry gRPC 50051, inference gRPC 50052; metrics registry 9101, inference 9102, ingester 9103, trainer 9104.
EXPOSE 50051 50052 9101 9102 9103 9104
ENTRYPOINT ["streamrec"]
CMD ["--help"]
