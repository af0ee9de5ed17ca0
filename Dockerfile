# syntax=docker/dockerfile:1
# Tuneboard's images for a fleet (docker-compose.yml, docs/deploy.md):
#   docker build --target web -t tuneboard-web .        the dashboard and API; no torch, no CUDA
#   docker build --target worker -t tuneboard-worker .  a Celery GPU worker with the `worker` extra
# Both install the wheel the `wheel` stage builds from this tree, as `pip install tuneboard` would: the wheel
# carries the templates, static files, migrations, alembic.ini and the front-end library files the pages load
# (from the `node` stage's node_modules) inside the package (app/bundled_files.py), so no tree is copied in.

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:22-slim
# The `base` flavour carries only the CUDA runtime stub and NVIDIA's container settings: PyTorch's CUDA wheels
# bring their own cuBLAS/cuDNN/NCCL, so the multi-GB `runtime` flavour would hold a second copy of them.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

# --- front-end libraries (htmx, uPlot) from the npm lock file; only node_modules leaves this stage ---------
FROM ${NODE_IMAGE} AS node
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

# --- the wheel: code, pages, front-end files and migrations in one package; only /wheels leaves this stage --
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY --from=node /build/node_modules ./node_modules
COPY pyproject.toml README.md hatch_build.py alembic.ini ./
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
COPY workers ./workers
COPY app ./app
# Fails, naming the missing files, if node_modules lacks a front-end file the pages load (hatch_build.py).
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- shared base: Python, a virtual environment, the unprivileged user and the data directory ---------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    TUNEBOARD_DATA_DIR=/data \
    TUNEBOARD_HOST=0.0.0.0 \
    TUNEBOARD_PORT=8000
RUN python -m venv /opt/venv \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/tuneboard tuneboard \
    && mkdir /data && chown tuneboard:tuneboard /data
WORKDIR /home/tuneboard

# --- web: FastAPI + Jinja2 + HTMX; the torch-free install ---------------------------------------------------
FROM base AS web
# Dependencies first, read from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; project = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(project['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/pyproject.toml /tmp/requirements.txt
# Then the wheel, from that folder only; --no-index: every dependency must already be there.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels tuneboard && rm -r /tmp/wheels
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TUNEBOARD_PORT', '8000'), timeout=4)"]
CMD ["tuneboard", "web"]

# --- worker: the ML stack on a CUDA base ---------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    TUNEBOARD_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Ubuntu 24.04's Python is 3.12 (the project needs >= 3.11); the venv keeps pip off the system packages.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/tuneboard tuneboard \
    && mkdir /data && chown tuneboard:tuneboard /data
WORKDIR /home/tuneboard
# torch first, from the index that matches the hosts' CUDA driver (PyPI's Linux wheels are CUDA builds),
# so resolving the `worker` extra keeps it instead of picking a build of its own.
ARG TORCH_SPEC=torch
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; project = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(project['dependencies'] + project['optional-dependencies']['worker']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/pyproject.toml /tmp/requirements.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels "tuneboard[worker]" && rm -r /tmp/wheels
USER 10001:10001
# Asks this container's Celery worker (named worker@<hostname> by `tuneboard worker`) to answer over the
# broker: alive, connected to Redis and not wedged. The main process answers while a child process trains.
HEALTHCHECK --interval=60s --timeout=20s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "celery -A workers inspect ping --destination \"worker@$HOSTNAME\" --timeout 10"]
# WORKER_QUEUES names the queues (GPU classes) this worker serves, comma-separated; unset, it serves the
# default queue (TUNEBOARD_DEFAULT_QUEUE). `exec` so Celery is PID 1 and gets docker's SIGTERM (warm shutdown).
CMD ["sh", "-c", "exec tuneboard worker --queues \"$WORKER_QUEUES\""]
