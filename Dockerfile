# The mcrecall image: `mcrecall ingest`, `mcrecall train --every ...`, `mcrecall recall ...`.
#   docker build -t mcrecall .          (compose.yaml builds it for the ingest and trainer services)
# torch is the CPU build, pinned, from the PyTorch CPU index; everything else comes from PyPI.
# Two stages: hnswlib ships only as source, so the compiler stays in the build stage.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/mcrecall
ENV PATH=/opt/mcrecall/bin:$PATH
# torch first, from the CPU index only (a plain `pip install torch` would take a CUDA build)
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY . /src
# the constraint keeps pip from replacing the CPU torch while it resolves the project; the
# extras: tune (`mcrecall tune`, Optuna) and fast ([kafka] client = "confluent")
RUN echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
 && pip install --constraint /tmp/constraints.txt "/src[tune,fast]" \
 && python -c "import torch, lmdb, pymilvus, faiss, hnswlib, optuna, confluent_kafka, mcrecall.core, mcrecall.ingest, mcrecall.train, mcrecall.serve, mcrecall.plugins; print('torch', torch.__version__)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcrecall" \
      org.opencontainers.image.description="Matrix-completion recall: ingest worker, trainer, recall client"
ENV PATH=/opt/mcrecall/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    MCRECALL_STORE_DATA_DIR=/data
COPY --from=build /opt/mcrecall /opt/mcrecall
# a fixed uid/gid, so that a bind-mounted data directory can be given to it (docs/operations.md)
RUN groupadd --system --gid 10001 mcrecall \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home mcrecall \
 && mkdir -p /data && chown mcrecall:mcrecall /data
USER mcrecall
WORKDIR /data
ENTRYPOINT ["mcrecall"]
CMD ["--help"]
