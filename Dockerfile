# syntax=docker/dockerfile:1
# energymon image: one image for every role, chosen by the command (gateway, processor, simulate, ...).
#   docker build -t energymon:local .
#   docker run --rm energymon:local validate /etc/energymon/plant.yaml
# deploy/docker-compose.yml builds and runs it.

# ---- build: a wheel of the project and wheels of its dependencies
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

# ---- runtime
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels energymon \
 && groupadd --system --gid 10001 energymon \
 && useradd --system --uid 10001 --gid energymon --home-dir /var/lib/energymon --shell /usr/sbin/nologin energymon \
 && install -d -o energymon -g energymon -m 0750 /var/lib/energymon \
 && install -d -m 0755 /etc/energymon
USER energymon
WORKDIR /var/lib/energymon
# the gateway's outbox and edge history, the processor's counter baselines and alert state
VOLUME ["/var/lib/energymon"]
# 9108 gateway metrics, 9109 processor metrics (with --metrics-host 0.0.0.0)
EXPOSE 9108 9109
# No HEALTHCHECK here: what "healthy" means depends on the command (a metrics port for gateway and
# processor, a Modbus port for simulate); deploy/docker-compose.yml sets one per service.
ENTRYPOINT ["energymon"]
CMD ["--help"]
