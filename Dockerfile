# The one image every dzone-pg service runs (migrate, ingest, serve); see docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md LICENSE alembic.ini constraints.txt ./
COPY dzone ./dzone
COPY shared ./shared
COPY ingest ./ingest
COPY serve ./serve
COPY simulator ./simulator
COPY migrations ./migrations
# Editable: shared/db.py finds alembic.ini and migrations/ next to the sources. Pinned: constraints.txt.
RUN pip install -c constraints.txt -e . && useradd --system --uid 10001 dzone
USER dzone
EXPOSE 3000
CMD ["dzone", "--help"]
