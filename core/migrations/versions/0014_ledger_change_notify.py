"""ledger change notifications: what a lot's verification depends on announces its changes

Statement-level triggers (with transition tables, so a bulk insert costs one notification per
statement, not one per row) on every table a lot's verification reads send
`NOTIFY ledger_change` at commit with the affected keys, comma-separated: `l<lot id>` (a record
of the lot or its lineage written), `w<window seq>` (an anchoring window or its leaves changed),
`u` (a leaf outside any window changed), `*` (a registry row that many records embed changed).
The API's workers LISTEN and drop what they derived from those keys (api/services/verifier.py).
PostgreSQL only; the functions run as their owner (SECURITY DEFINER) so that a writer role does
not need to read the tables the mapping joins.

Revision ID: 0014
Revises: 0009
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = ("0007", "0008")  # the trace and ledger tables

CHANNEL = "ledger_change"
_DIGEST_LOTS = (
    "SELECT 'l' || ls.lot_id FROM {rows} r JOIN plot p ON r.tag = 'plot' AND p.plot_no = r.value "
    "JOIN lot_source ls ON ls.plot_id = p.id "
    "UNION SELECT 'l' || ls.lot_id FROM {rows} r JOIN herd h ON r.tag = 'herd' AND h.herd_no = r.value "
    "JOIN lot_source ls ON ls.herd_id = h.id"
)
_EVENT_LOTS = (
    "SELECT 'l' || e.lot_id FROM {rows} r JOIN trace_event e ON e.id = r.{col} WHERE e.lot_id IS NOT NULL "
    "UNION SELECT 'l' || tel.lot_id FROM {rows} r JOIN trace_event_lot tel ON tel.trace_event_id = r.{col}"
)
# table -> the keys its changed rows affect ({rows}: the old or new rows of the statement)
KEYS: dict[str, str] = {
    "lot": "SELECT 'l' || id FROM {rows}",
    "lot_source": "SELECT 'l' || lot_id FROM {rows}",
    "inspection": "SELECT 'l' || lot_id FROM {rows}",
    "growth_summary": "SELECT 'l' || lot_id FROM {rows}",
    "lot_manifest": "SELECT 'l' || lot_id FROM {rows}",
    "trace_event_lot": "SELECT 'l' || lot_id FROM {rows}",
    "lot_parent": "SELECT 'l' || child_lot_id FROM {rows} UNION SELECT 'l' || parent_lot_id FROM {rows}",
    "trace_event": "SELECT 'l' || lot_id FROM {rows} WHERE lot_id IS NOT NULL UNION "
    + _EVENT_LOTS.replace("{col}", "id"),
    "event_correction": _EVENT_LOTS.replace("{col}", "event_id")
    + " UNION "
    + _EVENT_LOTS.replace("{col}", "corrective_event_id"),
    "inspection_item": "SELECT 'l' || i.lot_id FROM {rows} r JOIN inspection i ON i.id = r.inspection_id",
    "telemetry_digest": _DIGEST_LOTS,
    "late_digest": _DIGEST_LOTS,
    "anchor_window": "SELECT 'w' || seq FROM {rows}",
    "ledger_leaf": "SELECT COALESCE('w' || window_seq, 'u') FROM {rows}",
    **{t: "SELECT '*'" for t in ("product", "facility", "plot", "herd", "farm", "village", "township")},
}

NOTIFY = f"""
CREATE OR REPLACE FUNCTION ledger_notify(keys text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  chunk text := '';
  k text;
BEGIN
  FOREACH k IN ARRAY keys LOOP
    IF k IS NULL THEN CONTINUE; END IF;
    IF length(chunk) + length(k) > 7000 THEN
      PERFORM pg_notify('{CHANNEL}', chunk);
      chunk := '';
    END IF;
    chunk := CASE WHEN chunk = '' THEN k ELSE chunk || ',' || k END;
  END LOOP;
  IF chunk <> '' THEN PERFORM pg_notify('{CHANNEL}', chunk); END IF;
END $$;
"""


def _function(table: str) -> str:
    new, old = KEYS[table].format(rows="new_rows"), KEYS[table].format(rows="old_rows")
    return f"""
CREATE OR REPLACE FUNCTION ledger_changed_{table}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM ledger_notify(ARRAY(SELECT DISTINCT k FROM ({new}) AS t(k)));
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM ledger_notify(ARRAY(SELECT DISTINCT k FROM ({old}) AS t(k)));
  ELSE
    PERFORM ledger_notify(ARRAY(SELECT DISTINCT k FROM ({new} UNION {old}) AS t(k)));
  END IF;
  RETURN NULL;
END $$;
"""


def _triggers(table: str) -> list[str]:
    fn = f"ledger_changed_{table}()"
    return [
        f"CREATE TRIGGER ledger_change_ins AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}",
        f"CREATE TRIGGER ledger_change_upd AFTER UPDATE ON {table} REFERENCING OLD TABLE AS old_rows "
        f"NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {fn}",
        f"CREATE TRIGGER ledger_change_del AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}",
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(NOTIFY)
    for table in KEYS:
        op.execute(_function(table))
        for statement in _triggers(table):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in KEYS:
        for name in ("ins", "upd", "del"):
            op.execute(f"DROP TRIGGER IF EXISTS ledger_change_{name} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS ledger_changed_{table}()")
    op.execute("DROP FUNCTION IF EXISTS ledger_notify(text[])")
