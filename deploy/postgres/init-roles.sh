#!/bin/sh
# PostgreSQL roles of the village services. Mounted into the postgres image's
# /docker-entrypoint-initdb.d, so it runs once, on the database's first start, as the superuser.
# One login role per service, its password from the Docker secret pg_password_<service>:
#   village_migrate  owns the schema (the `migrate` service creates the tables and then grants the
#                    others exactly what core/db_roles.py declares)
#   village_api, village_ingest, village_anchor, village_broker, village_alerts  log in, nothing more until then.
# tests/test_db_roles.py runs this script against a real PostgreSQL.
set -eu
secrets="${VILLAGE_DB_SECRETS_DIR:-/run/secrets}"
sql() { psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" "$@"; }

for service in migrate api ingest anchor broker alerts; do
  file="$secrets/pg_password_$service"
  if [ ! -s "$file" ]; then
    echo "init-roles: $file is missing or empty" >&2
    exit 1
  fi
  # The password is read by psql itself (backquotes), so it never appears in a command line.
  sql -v role="village_$service" <<SQL
\set password \`cat '$file'\`
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SQL
done

sql -v db="$POSTGRES_DB" <<'SQL'
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO village_migrate, village_api, village_ingest, village_anchor, village_broker,
  village_alerts;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO village_migrate;
SQL
echo "init-roles: created village_migrate, village_api, village_ingest, village_anchor, village_broker, village_alerts"
