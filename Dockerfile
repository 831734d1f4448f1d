# The Task Service image: `docker compose up -d` runs it with PostgreSQL, migrations first.
# Dependencies come from requirements.lock (exact versions, hash-checked); the service runs
# as an unprivileged user and reports its health on /health.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r requirements.lock
COPY . .
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    LOG_FORMAT=json

RUN useradd --create-home --uid 10001 --user-group app
COPY --from=build /opt/venv /opt/venv

USER app
WORKDIR /home/app
EXPOSE 8080

# Migrations run once before the service starts (compose's `migrate` service, the k8s init
# container): `serve` refuses a database that is not migrated, naming the command to run.
# To run the image alone, run `task-service migrate` first or set AUTO_MIGRATE=true.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"]
CMD ["task-service", "serve"]
