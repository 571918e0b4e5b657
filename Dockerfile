# CPU image of rayscribe: the Serve app on the bundled tiny.en model.
#   docker build -t rayscribe .
#   docker run --rm -p 8000:8000 rayscribe
# Inside the container the proxy binds 0.0.0.0 (RAYSCRIBE_SERVER__HOST, applied by
# deployments/serve_launch.py, the one place that decides the bind) so the published port
# works; with authentication off that starts only in RAYSCRIBE_ENV=dev, with a loud warning.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RAYSCRIBE_DATA_DIR=/var/lib/rayscribe \
    RAYSCRIBE_SERVER__HOST=0.0.0.0

RUN useradd --create-home --uid 1000 rayscribe \
    && mkdir -p /var/lib/rayscribe && chown rayscribe /var/lib/rayscribe
WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir deployments services cluster \
    && touch deployments/__init__.py services/__init__.py cluster/__init__.py \
    && pip install . \
    && pip uninstall -y rayscribe

COPY deployments ./deployments
COPY services ./services
COPY cluster ./cluster
COPY serve_config.yaml ./
RUN pip install --no-deps .

USER rayscribe
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"
# Migrations first (they take an advisory lock on PostgreSQL, so replicas never race).
CMD ["sh", "-c", "python -m services.migrations upgrade head && exec python -m deployments.serve_launch run serve_config.yaml"]
