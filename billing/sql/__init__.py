"""The SQL of billing's PostgreSQL backend, in versioned files that migrations load.

A file is never edited once a migration has loaded it: a change is a new file (`_v2`) and a new
migration, so every database runs the text its migration history says.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def render(name: str, apps) -> str:
    """The file's SQL with the tables' names of the (historical) models filled in."""
    log = apps.get_model("usage", "RequestLog")
    # The columns a settlement rewrites on a placeholder row.
    columns = [f.column for f in log._meta.concrete_fields if f.column not in ("id", "request_id")]
    log_update = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns)
    log_set = ", ".join(f"{column} = n.{column}" for column in columns)
    text = (HERE / name).read_text()
    # Only files from version 2 on name the rollup table (older migrations' states lack it).
    rollup = apps.get_model("usage", "UsageRollup")._meta.db_table if "{rollup}" in text else ""
    return text.format(
        wallet=apps.get_model("billing", "Wallet")._meta.db_table,
        hold=apps.get_model("billing", "Hold")._meta.db_table,
        ledger=apps.get_model("billing", "LedgerEntry")._meta.db_table,
        key=apps.get_model("accounts", "ApiToken")._meta.db_table,
        group=apps.get_model("accounts", "TokenGroup")._meta.db_table,
        member=apps.get_model("accounts", "Membership")._meta.db_table,
        log=log._meta.db_table,
        log_update=log_update,
        log_set=log_set,
        rollup=rollup,
    )
