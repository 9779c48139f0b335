#!/bin/bash
# InfluxDB credentials of the village services. Mounted into the influxdb:2 image's
# /docker-entrypoint-initdb.d, so it runs once, after the first start's setup, with the influx CLI
# already configured with the admin token (and DOCKER_INFLUXDB_INIT_* set, bucket and org ids too).
# The code speaks the v1 API with basic auth (INFLUX_USERNAME / INFLUX_PASSWORD), so each service
# gets a v1 authorization on exactly the buckets it uses, its password from the Docker secret
# influx_password_<service>:
#   village_api     reads  village, village/late, village/rollup  (trace pages and verification, dashboard, indicators)
#   village_anchor  reads  village, village/late                 (daily and supplementary digests, growth summaries)
#   village_ingest  writes village, village/late                 (readings, and late readings of sealed days)
#   village_alerts  reads  village                               (the latest readings, for alerts)
#   village_ops     reads and writes all three                   (`village rollups`, `village deadletters replay`)
# The admin token stays with InfluxDB itself: no village service gets it.
set -euo pipefail
secrets="${VILLAGE_INFLUX_SECRETS_DIR:-/run/secrets}"
org="${DOCKER_INFLUXDB_INIT_ORG}"
raw="${DOCKER_INFLUXDB_INIT_BUCKET_ID}"

# Rollups live in the retention policy `rollup` of the same database: on 2.x, a bucket named
# "<db>/rollup" (mapped to database village, retention policy rollup); kept forever.
rollup="$(influx bucket create --org "$org" --name "${DOCKER_INFLUXDB_INIT_BUCKET}/rollup" --retention 0 \
  --hide-headers | cut -f 1)"

# Late readings (of days already sealed for anchoring) live in the retention policy `late`: on 2.x
# a bucket "<db>/late", kept as long as the readings themselves.
late="$(influx bucket create --org "$org" --name "${DOCKER_INFLUXDB_INIT_BUCKET}/late" \
  --retention "${DOCKER_INFLUXDB_INIT_RETENTION:-0}" --hide-headers | cut -f 1)"

v1_auth() {  # service, then --read-bucket / --write-bucket flags
  local service="$1"
  shift
  local file="$secrets/influx_password_$service"
  if [ ! -s "$file" ]; then
    echo "init-auth: $file is missing or empty" >&2
    exit 1
  fi
  influx v1 auth create --org "$org" --username "village_$service" --password "$(cat "$file")" \
    --description "village $service" "$@" --hide-headers > /dev/null
}

v1_auth api --read-bucket "$raw" --read-bucket "$late" --read-bucket "$rollup"
v1_auth anchor --read-bucket "$raw" --read-bucket "$late"
v1_auth ingest --write-bucket "$raw" --write-bucket "$late"
v1_auth alerts --read-bucket "$raw"
v1_auth ops --read-bucket "$raw" --read-bucket "$late" --read-bucket "$rollup" \
  --write-bucket "$raw" --write-bucket "$late" --write-bucket "$rollup"
echo "init-auth: v1 authorizations village_api, village_anchor, village_ingest, village_alerts, village_ops"
