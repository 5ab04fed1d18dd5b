# shadowscale: the agent (`shadowscale agent --config FILE`) and the GPU exporter (`shadowscale produce gpu ...`).
#   docker build -t shadowscale:0.1.0 .
# Only the core is installed (no simulator, plotting, Bayesian-profiling or broker extras), from the hash-pinned
# lock requirements/agent.lock (`make lock` re-resolves it; `make test` checks it is current).
#
# The base image is pinned by digest. The digest below is the one public repositories record for
# python:3.11.10-slim-bookworm; it was not pulled and checked here. Refresh (or check) it with:
#   docker buildx imagetools inspect python:3.11.10-slim-bookworm --format '{{json .Manifest.Digest}}'
# (a wrong digest fails the build: "manifest unknown"; it never silently takes another image).
#
# NVML (libnvidia-ml.so.1) is not in the image: the NVIDIA container toolkit mounts the node's driver library into
# the exporter's container (NVIDIA_VISIBLE_DEVICES / runtimeClassName nvidia).

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:840e180ebcc6e5c8efab209c43f5e40fd2af98cb49db5c7103c90539c56bb30e

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/shadowscale
COPY requirements/agent.lock /tmp/agent.lock
RUN /opt/shadowscale/bin/pip install --no-compile --no-deps --require-hashes -r /tmp/agent.lock
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY shadowscale ./shadowscale
COPY agent ./agent
COPY policies ./policies
COPY simulators ./simulators
COPY benchmarks ./benchmarks
COPY data ./data
RUN /opt/shadowscale/bin/pip install --no-compile --no-deps . \
 && /opt/shadowscale/bin/pip uninstall --yes pip \
 && /opt/shadowscale/bin/python -m compileall -q /opt/shadowscale/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="shadowscale" \
      org.opencontainers.image.description="Event-driven autoscaling agent and NVML GPU exporter" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 shadowscale \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin shadowscale
COPY --from=build /opt/shadowscale /opt/shadowscale
ENV PATH=/opt/shadowscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHADOWSCALE_OFFLINE=1
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["shadowscale"]
CMD ["agent", "--config", "/etc/shadowscale/agent.yaml"]
