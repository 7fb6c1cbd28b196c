# syntax=docker/dockerfile:1
# kexp's trainer, CPU only: `python -m kexp_trainers.run` (the command the operator renders),
# running as uid 1000 (the operator's TRAINER_UID: pods run with runAsUser 1000).
#
# Build from the repository root:
#   docker build -f images/trainer.Dockerfile \
#     --build-arg VERSION="$(git describe --tags --always --dirty)" \
#     --build-arg GIT_COMMIT="$(git rev-parse HEAD)" \
#     -t kexp/trainer:dev .
#
# Base images and torch are pinned through ARGs. For a reproducible build pin the base image's
# digest too: --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11.11-slim-bookworm` prints it).
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
# PyTorch's CPU-only wheels: PyPI's default Linux torch wheel pulls about 3 GB of CUDA libraries.
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="kexp-trainer" \
      org.opencontainers.image.description="kexp trainer (CPU): PPO, SAC, BC, GAIL, CIMRL on gymnasium and highway-env" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="https://github.com/kexp-io/kexp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      io.kexp.torch="${TORCH_VERSION}" \
      io.kexp.device="cpu"

ENV VIRTUAL_ENV=/opt/kexp \
    PATH=/opt/kexp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# torch first, from its own index; then kexp with the [trainers] extra, whose torch requirement
# the CPU build already satisfies, so pip keeps it.
RUN python -m venv /opt/kexp \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir "$(echo /dist/kexp-*.whl)[trainers,tune]"

# uid/gid 1000: the pod's securityContext (runAsUser/runAsGroup/fsGroup 1000) expects it.
# The pod's root filesystem is read-only; /tmp is an emptyDir, so HOME and caches go there.
RUN groupadd --gid 1000 kexp \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kexp
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.matplotlib
USER 1000:1000
WORKDIR /tmp

# Prometheus metrics ($KEXP_METRICS_PORT).
EXPOSE 9090
ENTRYPOINT ["python", "-m", "kexp_trainers.run"]
