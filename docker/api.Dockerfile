# syntax=docker/dockerfile:1
#
# CPU image of the search service (`search-api`). Build from the repository root:
#   docker build -f docker/api.Dockerfile -t pig-video-search-api .
# Nothing is downloaded at run time: the service loads the text model from the copy that
# `indexer ingest` stores in INDEX_DIR/model.

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# The CPU build of torch is a few hundred MB; the default PyPI build bundles CUDA (several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Empty installs the newest torch the index lists; set it (e.g. 2.9.1) for repeatable builds.
ARG TORCH_VERSION=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch and torchvision first, from the CPU index, so that installing the package below finds
# them already satisfied instead of pulling the CUDA build from PyPI.
RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch${TORCH_VERSION:+==${TORCH_VERSION}}" torchvision

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY indexer ./indexer
COPY search_api ./search_api
COPY training ./training
RUN pip install ".[cpu]"


FROM ${PYTHON_IMAGE}

ARG APP_UID=10001
ARG APP_GID=10001

RUN groupadd --system --gid "${APP_GID}" pig \
    && useradd --system --uid "${APP_UID}" --gid pig --home-dir /home/pig --create-home pig \
    && mkdir -p /data/index \
    && chown -R pig:pig /data

COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /usr/local/lib/pig/healthcheck.py

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIG_INDEX_DIR=/data/index \
    PIG_HOST=0.0.0.0 \
    PIG_PORT=8000 \
    PIG_DEVICE=cpu

USER ${APP_UID}:${APP_GID}
WORKDIR /home/pig
EXPOSE 8000

# /readyz answers 200 once the index is loaded and a query has been encoded. Loading a large
# model on a slow disk can take a while, hence the start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/pig/healthcheck.py"]

ENTRYPOINT ["search-api"]
