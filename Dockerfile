# Lookalike image: the same `lookalike` commands as outside a container (see README).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LOOKALIKE_DATA_DIR=/data \
    LOOKALIKE_DEMO_DIR=/data/demo \
    LOOKALIKE_HOST=0.0.0.0 \
    LOOKALIKE_PORT=8000

# The demo catalog's source (real furniture models); not needed to serve your own catalog.
RUN apt-get update \
    && apt-get install -y --no-install-recommends sweethome3d-furniture=1.8-1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /srv/lookalike
COPY pyproject.toml README.md ./
COPY models ./models
COPY indexer ./indexer
COPY app ./app
COPY cli ./cli
COPY demo ./demo
COPY training ./training
RUN pip install --no-cache-dir './[milvus]' \
    && useradd --create-home --uid 1000 lookalike \
    && mkdir -p /data \
    && chown lookalike /data

USER 1000
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["lookalike", "serve"]
