"""PostgreSQL roles of the deployment: what each service may read and write in the registry database.

One login role per service (deploy/postgres/init-roles.sh creates them on the database's first start,
with passwords from Docker secrets); `village registry migrate`, run as `village_migrate`, which owns
the schema, applies `GRANTS` after every migration, so a new table is nobody's until it is declared
here (tests/test_db_roles.py fails for a table that is not). Worked out from the code each service runs:

- village_migrate (migrate, one-off admin jobs): owns the schema;
- village_api (api, `village users`): reads every table
  but service_account; inserts and updates registry and trace rows (the admin API), api_user,
  api_key, alerts and webhook deliveries; inserts alert events, never updates them (their history
  is append-only);
- village_ingest (ingest): reads devices' ids, kinds, status and places (not their secret hashes)
  and the places' codes; inserts and reads dead letters;
- village_anchor (anchor): reads registry and trace tables; writes the ledger's own tables;
- village_broker (broker-init, broker-sync): reads devices and service accounts; writes the ingest
  account;
- village_alerts (alerts, `village alerts run`): reads the registry and dead letters (device health),
  reads and writes alerts and webhook deliveries; inserts alert events, never updates them.

No role but the owner may delete anything, but for the API's own sign-in counters (api_login_throttle,
which it clears on a right password) and its workers' shared verification cache (trace_check); every
service role reads `alembic_version`, since each command checks that the schema is current before it
starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, text

__all__ = ["GRANTS", "ROLE_PREFIX", "Grant", "apply_grants", "role_of"]

ROLE_PREFIX = "village_"
OWNER = "migrate"

REGISTRY = ("county", "township", "village", "farm", "plot", "herd", "animal", "device")
TRACE = (
    "product",
    "facility",
    "lot",
    "lot_source",
    "lot_parent",
    "trace_event",
    "trace_event_lot",
    "inspection",
    "inspection_item",
    "event_correction",
)
LEDGER = (
    "anchor_window",
    "ledger_leaf",
    "ledger_tree_page",
    "growth_summary",
    "telemetry_digest",
    "lot_manifest",
    "telemetry_seal",
    "late_digest",
)
OTHER = (
    "dead_letter",
    "dead_letter_payload",
    "service_account",
    "county_statistic",
    "api_user",
    "api_key",
    "api_login_throttle",
    "trace_check",
    "alert",
    "alert_event",
    "webhook_delivery",
    "boundary",
    "alembic_version",
)
ALERTS = ("alert", "alert_event", "webhook_delivery")
TABLES = (*REGISTRY, *TRACE, *LEDGER, *OTHER)


@dataclass(frozen=True)
class Grant:
    """Table privileges of one service role. `columns` limits SELECT on a table to those columns."""

    select: tuple[str, ...] = ()
    insert: tuple[str, ...] = ()
    update: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def privileges(self, table: str) -> set[str]:
        pairs = (("INSERT", self.insert), ("UPDATE", self.update), ("DELETE", self.delete))
        out = {p for p, tables in pairs if table in tables}
        if table in self.select or table in self.columns:
            out.add("SELECT")
        return out


GRANTS: dict[str, Grant] = {
    # The API and pages: public trace and verification (every record and ledger table), dashboard
    # (dead letters, statistics), administration (registry and trace writes through the importers,
    # device provisioning), sign-in and API keys. Never the ledger's own tables; deletes only of its own caches.
    "api": Grant(
        select=tuple(t for t in TABLES if t != "service_account"),
        insert=(
            *(t for t in REGISTRY if t != "county"),
            *TRACE,
            "api_user",
            "api_key",
            "api_login_throttle",
            "trace_check",
            *ALERTS,
        ),
        # alert_event is append-only: inserted, never updated
        update=(
            *REGISTRY,
            *TRACE,
            "api_user",
            "api_key",
            "api_login_throttle",
            "trace_check",
            "alert",
            "webhook_delivery",
        ),
        delete=("api_login_throttle", "trace_check"),
    ),
    # Ingest: one query resolving a device to its kind, status and place (ingest/enrich.py), the
    # dead-letter store (insert, and the redelivery check), and the days sealed for anchoring (where a
    # late reading goes, ingest/late.py). Not the devices' secret hashes, not farms.
    "ingest": Grant(
        select=("dead_letter", "dead_letter_payload", "telemetry_seal", "alembic_version"),
        insert=("dead_letter", "dead_letter_payload"),
        columns={
            "device": ("id", "kind", "status", "plot_id", "herd_id", "animal_id"),
            "plot": ("id", "plot_no", "village_code"),
            "herd": ("id", "herd_no", "village_code"),
            "animal": ("id", "herd_id", "ear_tag"),
            "village": ("code", "township_code"),
            "township": ("code", "county_code"),
        },
    ),
    # The anchoring worker: reads every record's source rows, writes only the ledger's tables.
    "anchor": Grant(
        select=(*REGISTRY, *TRACE, *LEDGER, "alembic_version"),
        insert=LEDGER,
        update=LEDGER,
    ),
    # The alert worker: device health (registry, dead letters), the alerts, their history (insert
    # only) and their webhook deliveries.
    "alerts": Grant(
        select=(*REGISTRY, "dead_letter", *ALERTS, "alembic_version"),
        insert=ALERTS,
        update=("alert", "webhook_delivery"),
    ),
    # broker-init and broker-sync: the broker's password and ACL files from devices and service
    # accounts, and the ingest account's hash.
    "broker": Grant(
        select=("device", "service_account", "alembic_version"),
        insert=("service_account",),
        update=("service_account",),
    ),
}


def role_of(service: str) -> str:
    return f"{ROLE_PREFIX}{service}"


SEQUENCES = text(
    "SELECT table_name, pg_get_serial_sequence(quote_ident(table_name), column_name) FROM information_schema.columns "
    "WHERE table_schema = 'public' AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')"
)


def apply_grants(engine: Engine) -> list[str]:
    """Grant each existing service role exactly its privileges (revoking anything else); returns the
    roles granted. PostgreSQL only, run by the schema's owner; roles not created are skipped."""
    if engine.dialect.name != "postgresql":
        return []
    done = []
    with engine.begin() as conn:
        existing = set(conn.scalars(text("SELECT rolname FROM pg_roles")))
        tables = set(conn.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")))
        sequences = {table: seq for table, seq in conn.execute(SEQUENCES) if seq}
        for service, grant in GRANTS.items():
            role = role_of(service)
            if role not in existing:
                continue
            q = f'"{role}"'
            conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {q}"))
            conn.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {q}"))
            conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {q}"))
            for table in sorted(tables):
                whole = grant.privileges(table) - ({"SELECT"} if table in grant.columns else set())
                if whole:
                    conn.execute(text(f'GRANT {", ".join(sorted(whole))} ON "{table}" TO {q}'))
                if table in grant.columns:
                    cols = ", ".join(f'"{c}"' for c in grant.columns[table])
                    conn.execute(text(f'GRANT SELECT ({cols}) ON "{table}" TO {q}'))
                if table in grant.insert and table in sequences:  # nextval of a serial id needs USAGE
                    conn.execute(text(f"GRANT USAGE ON SEQUENCE {sequences[table]} TO {q}"))
            done.append(role)
    return done
