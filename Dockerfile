# The grpc-ps image: ps-server, ps-worker, ps-admin, ps-health and ps-launch, run as a
# non-root user. Build from the checkout:  docker build -t grpc-ps .
# The build stage turns the project and its dependencies into wheels; the final stage
# installs only those wheels (no compiler, no source tree, no build tools, no pip cache).
# No `syntax` parser directive at the top: the engine's built-in frontend supports
# `RUN --mount`, so the build needs no frontend image from a registry (it builds offline).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY ps ./ps
COPY worker ./worker
COPY launcher ./launcher
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index /wheels/*.whl \
    && pip uninstall --yes setuptools wheel \
    && useradd --create-home --uid 10001 --user-group ps \
    && mkdir /checkpoints && chown ps:ps /checkpoints
USER ps
WORKDIR /home/ps
# gRPC (ps-server --port) and Prometheus metrics (--metrics-port)
EXPOSE 50051 50052 9100
CMD ["ps-server", "--host", "0.0.0.0"]
