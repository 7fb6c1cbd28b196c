# syntax=docker/dockerfile:1
# The kexp operator: `kexp-operator` (kopf) on a slim Python, as a non-root user.
#
# Build from the repository root (the context must be the repo; .dockerignore keeps it small):
#   docker build -f images/operator.Dockerfile \
#     --build-arg VERSION="$(git describe --tags --always --dirty)" \
#     --build-arg GIT_COMMIT="$(git rev-parse HEAD)" \
#     -t kexp/operator:dev .
#
# Base images are pinned by tag through ARGs. For a reproducible build pin the digest too, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest>
# where `docker buildx imagetools inspect python:3.11.11-slim-bookworm` prints the digest
# (or let Renovate/Dependabot keep the ARG's default pinned).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- builder: a wheel of this project --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# Only what the wheel is built from: a change to tests or docs does not rebuild it.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainers/ trainers/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.0.0-dev
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="kexp-operator" \
      org.opencontainers.image.description="kexp: Kubernetes operator for ML experiments" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="https://github.com/kexp-io/kexp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# git: the operator resolves spec.source.revision (a branch or tag) with `git ls-remote`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

# A venv first on PATH: `python` and `kexp-operator` are the ones with kexp installed.
ENV VIRTUAL_ENV=/opt/kexp \
    PATH=/opt/kexp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The operator alone: no [trainers] extra, so no torch in this image.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    python -m venv /opt/kexp \
 && pip install --no-cache-dir /dist/kexp-*.whl

# Numeric uid/gid, so that a pod's runAsNonRoot can verify it without reading /etc/passwd.
# HOME is /tmp: with a read-only root filesystem only mounted volumes are writable.
RUN groupadd --gid 1000 kexp \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kexp
ENV HOME=/tmp
USER 1000:1000

# 8080: Prometheus metrics (KEXP_OPERATOR_METRICS_PORT); 8081: liveness (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["kexp-operator"]
CMD ["--all-namespaces"]
