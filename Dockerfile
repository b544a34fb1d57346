# One image for every NOFX Autonomy process: the three Temporal workers, the `nofx` CLI and the
# one-shot `nofx db migrate`. docker-compose.yml picks the process with `command:`; the default
# is the decisions worker.
#
#   docker build -t nofx-autonomy .
#   docker run --rm -e NOFX_TEMPORAL_ADDRESS=temporal:7233 \
#     -e NOFX_DATABASE_URL=postgresql://... nofx-autonomy python -m workers.healing

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv with the project and its dependencies ------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for any dependency without a wheel for this platform (e.g. on arm64).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall
# pandas, LightGBM and temporalio.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" \
        > /tmp/requirements.txt \
    && pip install --upgrade pip "setuptools>=68" wheel \
    && pip install -r /tmp/requirements.txt

# The project itself. It is installed in editable mode on purpose: the code the processes run is
# this tree under /app, so the numbered migrations in /app/sql sit beside the packages, wherever
# the migration runner looks for them (next to the `nofx` package or in the working directory).
COPY README.md ./
COPY sql ./sql
COPY nofx ./nofx
COPY models ./models
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
COPY pilot ./pilot
RUN pip install --no-deps -e . \
    && python -m compileall -q /app

# --- runtime: the virtualenv and the source tree, run as an unprivileged user ---------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: LightGBM's wheels link OpenMP dynamically and the slim image does not ship it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 nofx \
    && useradd --system --uid 10001 --gid nofx --home-dir /home/nofx --create-home \
        --shell /usr/sbin/nologin nofx \
    && install -d -o nofx -g nofx /var/lib/nofx

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NOFX_HOME=/var/lib/nofx \
    NOFX_METRICS_PORT=9464

WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# Prometheus /metrics of the worker (Temporal SDK and NOFX metrics).
EXPOSE 9464

# Healthy once the worker serves its metrics; curl is not in the slim image, Python is.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('NOFX_METRICS_PORT', '9464'), timeout=4)"]

CMD ["python", "-m", "workers.decisions"]
