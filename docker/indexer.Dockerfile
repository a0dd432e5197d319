# syntax=docker/dockerfile:1
#
# GPU image of the batch indexer (`indexer`). Build from the repository root:
#   docker build -f docker/indexer.Dockerfile -t pig-video-search-indexer .
# Started without a GPU, the image still works: `--device auto` (the default) then encodes on
# the CPU, and FAISS runs its CPU code paths.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS builder

# Wheels built for CUDA 12.8; they bring their own CUDA libraries (cuDNN included), so the
# base image only provides the driver hooks of the NVIDIA container toolkit.
# NOTE: this index URL and the unpinned torch version are not tested here (no network to the
# PyTorch index): pin TORCH_VERSION to a release the index lists when you build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=""
# faiss-gpu-cu12 is the FAISS GPU build on PyPI for CUDA 12; it falls back to CPU indexes
# when no GPU is visible.
ARG FAISS_PACKAGE=faiss-gpu-cu12==1.14.1.post1
# Set both to bake open_clip weights into the model cache at build time, for example
# PRELOAD_MODEL=ViT-B-32 PRELOAD_PRETRAINED=openai. Left empty, nothing is downloaded.
ARG PRELOAD_MODEL=""
ARG PRELOAD_PRETRAINED=""

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN pip install --index-url "${TORCH_INDEX_URL}" \
        "torch${TORCH_VERSION:+==${TORCH_VERSION}}" torchvision

WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY indexer ./indexer
COPY search_api ./search_api
COPY training ./training
# The package's own dependencies (decord and PyAV included) without faiss-cpu, then the GPU
# build of FAISS in its place.
RUN pip install . "${FAISS_PACKAGE}"

ENV HF_HOME=/cache/huggingface
RUN mkdir -p "${HF_HOME}" \
    && if [ -n "${PRELOAD_MODEL}" ] && [ -n "${PRELOAD_PRETRAINED}" ]; then \
        python -c "import sys; from shared.model import create_backbone; create_backbone(sys.argv[1], sys.argv[2])" \
            "${PRELOAD_MODEL}" "${PRELOAD_PRETRAINED}"; \
    fi


FROM ${CUDA_IMAGE}

ARG APP_UID=10001
ARG APP_GID=10001

# ffmpeg and ffprobe are for operators inspecting files that failed to decode; the indexer
# itself decodes through the libraries bundled with the decord and PyAV wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ffmpeg \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 images ship a user "ubuntu" with uid 1000; the service user gets its own ids,
# the same as in the API image, so both containers can share the index volume.
RUN groupadd --system --gid "${APP_GID}" pig \
    && useradd --system --uid "${APP_UID}" --gid pig --home-dir /home/pig --create-home pig \
    && mkdir -p /data/index /videos /checkpoints \
    && chown pig:pig /data /data/index

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=pig:pig /cache /cache

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    PIG_INDEX_DIR=/data/index \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER ${APP_UID}:${APP_GID}
WORKDIR /home/pig

# The indexer is a one-shot job, so its health is its exit status; this check only confirms
# that the environment imports and that the index directory is writable.
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "python -c 'import faiss, torch, decord, av' && test -w \"$PIG_INDEX_DIR\""]

ENTRYPOINT ["indexer"]
CMD ["status"]
