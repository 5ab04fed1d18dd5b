# shadowscale: the agent (`shadowscale agent --config FILE`) and the GPU exporter (`shadowscale produce gpu ...`).
#   docker build -t shadowscale:0.1.0 .
# Base pinned by version; pin it by digest too in CI (docker buildx imagetools inspect python:3.11.10-slim-bookworm).
# NVML (libnvidia-ml.so.1) is not in the image: the NVIDIA container toolkit mounts the node's driver library into
# the exporter's container (NVIDIA_VISIBLE_DEVICES / runtimeClassName nvidia).

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/shadowscale
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shadowscale ./shadowscale
COPY agent ./agent
COPY policies ./policies
COPY simulators ./simulators
COPY benchmarks ./benchmarks
RUN /opt/shadowscale/bin/pip install --no-compile . \
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
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["shadowscale"]
CMD ["agent", "--config", "/etc/shadowscale/agent.yaml"]
