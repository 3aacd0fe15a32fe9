# syntax=docker/dockerfile:1
# Build stage: the project with the extras config/worker.yaml uses (redis, postgres); compilers stay here.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY handlers ./handlers
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --upgrade pip==25.3 \
    && /opt/venv/bin/pip install --no-cache-dir '.[redis,postgres]'

# Runtime stage: the virtualenv, the example config, a non-root user; no compilers.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv
COPY config/worker.yaml /etc/changestream-worker/worker.yaml
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin worker
USER 10001
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["changestream-worker"]
CMD ["run", "--config", "/etc/changestream-worker/worker.yaml"]
