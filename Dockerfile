# The Task Service image: `docker compose up -d` runs it with PostgreSQL, migrations first.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .
RUN pip install . \
    && useradd --create-home --uid 10001 --user-group app

USER app
WORKDIR /home/app

# Migrations run once, before the replicas start (`task-service migrate`, as compose
# does), not in every container at startup. Set AUTO_MIGRATE=true to run the image alone.
ENV AUTO_MIGRATE=false

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["task-service", "serve", "--host", "0.0.0.0", "--port", "8080"]
