# syntax=docker/dockerfile:1
# kexp's trainer with CUDA: `python -m kexp_trainers.run` (the command the operator renders),
# running as uid 1000 (the operator's TRAINER_UID: pods run with runAsUser 1000).
#
# The CUDA runtime, cuDNN and NCCL come inside PyTorch's CUDA wheels (the nvidia-* packages),
# so the base is the same slim Python as the CPU image rather than nvidia/cuda (whose Ubuntu has
# another Python); only the driver comes from the node, through the NVIDIA container toolkit.
#
# Build from the repository root:
#   docker build -f images/trainer-cuda.Dockerfile \
#     --build-arg VERSION="$(git describe --tags --always --dirty)" \
#     --build-arg GIT_COMMIT="$(git rev-parse HEAD)" \
#     -t kexp/trainer-cuda:dev .
# TORCH_INDEX_URL picks the CUDA build (cu121, cu124); it must suit the nodes' driver.
# Pin the base image's digest for a reproducible build:
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- builder: a wheel of this project --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainers/ trainers/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.0.0-dev
ARG GIT_COMMIT=unknown
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
LABEL org.opencontainers.image.title="kexp-trainer-cuda" \
      org.opencontainers.image.description="kexp trainer (CUDA): PPO, SAC, BC, GAIL, CIMRL on gymnasium and highway-env" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="https://github.com/kexp-io/kexp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      io.kexp.torch="${TORCH_VERSION}" \
      io.kexp.device="cuda"

ENV VIRTUAL_ENV=/opt/kexp \
    PATH=/opt/kexp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    # The NVIDIA container runtime mounts the driver only into containers that ask for it;
    # nvidia/cuda images set these, a plain Python base must say so itself.
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN python -m venv /opt/kexp \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir "$(echo /dist/kexp-*.whl)[trainers,tune]"

RUN groupadd --gid 1000 kexp \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kexp
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.matplotlib
USER 1000:1000
WORKDIR /tmp

EXPOSE 9090
ENTRYPOINT ["python", "-m", "kexp_trainers.run"]
