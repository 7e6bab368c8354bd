"""manage.py fill_logs: synthetic request logs in bulk, for the benchmark of the logs at scale.

    manage.py fill_logs --rows 10000000 --users 1000 --days 90

Makes --users users (emails fill-N@fill.invalid, no password), three keys each (two in a group),
then COPYs --rows request logs spread over the last --days days, and recounts the usage rollups
of those hours. One user, fill-0, gets --heavy-share of all rows (the one the benchmark reads:
the heaviest account is the slowest). PostgreSQL only; it refuses a database that already has
fill users unless --append.
"""

import random
import time
from datetime import UTC, datetime, timedelta

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from accounts.models import ApiToken, TokenGroup, User
from accounts.services import api_key_digest
from usage.models import RequestLog, UsageRollup

DOMAIN = "fill.invalid"
MODELS = [  # (model id, weight, input and output price per 1M tokens, micro-USD)
    ("gpt-5.4-mini", 30, 150_000, 600_000), ("gpt-5.4", 12, 2_500_000, 10_000_000),
    ("claude-sonnet-4.6", 10, 3_000_000, 15_000_000), ("gemini-2.5-flash", 12, 300_000, 2_500_000),
    ("deepseek-v4", 10, 270_000, 1_100_000), ("qwen3.5-flash", 8, 50_000, 400_000),
    ("kimi-k2.6", 5, 600_000, 2_500_000), ("text-embedding-3-small", 8, 20_000, 0),
    ("gemini-3.1-pro-preview", 3, 2_000_000, 12_000_000),
    ("claude-opus-4.8", 2, 15_000_000, 75_000_000),
]  # fmt: skip
# One chunk of rows, all drawn inside PostgreSQL: the key (fill-0's keys get :heavy of the rows),
# the model (by weight), the status (95 % 200), tokens, cost (ceil of tokens × price / 1M), time.
FILL_SQL = """
INSERT INTO {log} (request_id, created_at, user_id, api_token_id, token_name, group_id,
    group_name, model_id, upstream_model, call_type, endpoint, is_stream, status_code,
    duration_ms, ttft_ms, prompt_tokens, completion_tokens, cached_tokens, cost_micros,
    channel_name, attempts, error_code, error_message, request_params, response_excerpt)
SELECT %(base)s || '-' || g, created, k.user_id, k.key_id, k.key_name, k.group_id,
       k.group_name, m.model_id, m.model_id, CASE WHEN m.price_out = 0 THEN 'embeddings'
       ELSE 'chat' END, CASE WHEN m.price_out = 0 THEN 'embeddings' ELSE 'chat.completions'
       END, stream, status, duration, CASE WHEN stream THEN 40 + (r_ttft * duration)::int END,
       prompt, completion, cached,
       CASE WHEN status = 200 THEN (prompt * m.price_in + completion * m.price_out + 999999)
            / 1000000 ELSE 0 END,
       'primary', 1, CASE status WHEN 200 THEN '' WHEN 429 THEN 'rate_limit_exceeded'
       WHEN 400 THEN 'invalid_request' WHEN 500 THEN 'upstream_error' ELSE 'bad_gateway' END,
       '', '{{"temperature": 0.7}}'::jsonb, ''
  FROM (
    SELECT g, r_ttft,
           %(since)s::timestamptz + make_interval(secs => (g + r_time) * %(step)s) AS created,
           CASE WHEN r_user < %(heavy)s THEN floor(r_key * %(heavy_keys)s)
                ELSE %(heavy_keys)s + floor(r_key * (%(keys)s - %(heavy_keys)s)) END AS key_idx,
           floor(r_model * %(models)s) AS model_idx,
           CASE WHEN r_status < 0.95 THEN 200 WHEN r_status < 0.97 THEN 429
                WHEN r_status < 0.98 THEN 400 WHEN r_status < 0.988 THEN 500 ELSE 502 END
               AS status,
           20 + (r_prompt * 3980)::int AS prompt, 1 + (r_completion * 1200)::int AS out_tokens,
           r_cached < 0.2 AS has_cache, 80 + (r_duration * 8920)::int AS duration,
           r_stream < 0.6 AS streamable
      FROM generate_series(%(first)s, %(last)s) g,
           LATERAL (SELECT random() + 0 * g AS r_user, random() AS r_key, random() AS r_model,
                           random() AS r_status, random() AS r_prompt, random() AS r_completion,
                           random() AS r_cached, random() AS r_duration, random() AS r_stream,
                           random() AS r_ttft, random() AS r_time) r
  ) x
  JOIN fill_keys k ON k.idx = x.key_idx
  JOIN fill_models m ON m.idx = x.model_idx,
  LATERAL (SELECT x.streamable AND m.price_out > 0 AS stream,
                  CASE WHEN x.status = 200 AND m.price_out > 0 THEN x.out_tokens ELSE 0 END
                      AS completion,
                  CASE WHEN x.has_cache THEN x.prompt / 2 ELSE 0 END AS cached) c
"""


class Command(BaseCommand):
    help = "COPY synthetic request logs (and their rollups) into PostgreSQL for the benchmark."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--users", type=int, default=1000)
        parser.add_argument("--days", type=int, default=90)
        parser.add_argument("--heavy-share", type=float, default=0.2)
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--append", action="store_true", help="add to existing fill users")

    def handle(self, *args, rows, users, days, heavy_share, seed, append, **options):
        if connection.vendor != "postgresql":
            raise CommandError("fill_logs needs PostgreSQL (it loads rows with COPY)")
        if rows < 1 or users < 1 or days < 1 or not 0 <= heavy_share <= 1:
            raise CommandError("--rows, --users and --days must be positive, --heavy-share 0..1")
        rng = random.Random(seed)
        started = time.monotonic()
        keys = self._accounts(users, append)
        self.stdout.write(f"{users} users and {len(keys)} keys ready")
        now = datetime.now(UTC)
        since = now - timedelta(days=days)
        self._insert(rng, keys, rows, since, now, heavy_share)
        self.stdout.write(f"{rows:,} logs written in {time.monotonic() - started:.1f} s")
        with transaction.atomic():
            self._rollups(since)
        # What autovacuum would do to a live table: statistics, and the visibility map that lets
        # index-only scans skip the heap.
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {RequestLog._meta.db_table}")
            cursor.execute(f"VACUUM ANALYZE {UsageRollup._meta.db_table}")
        self.stdout.write(f"done in {time.monotonic() - started:.1f} s")

    def _accounts(self, count: int, append: bool) -> list[tuple]:
        """(user id, key id, key name, group id, group name) of three keys per fill user."""
        existing = User.objects.filter(email__endswith=f"@{DOMAIN}")
        if existing.exists() and not append:
            raise CommandError("this database has fill users already; pass --append to add logs")
        if not existing.exists():
            password = make_password(None)
            User.objects.bulk_create(
                User(email=f"fill-{n}@{DOMAIN}", password=password) for n in range(count)
            )
            fill_users = list(User.objects.filter(email__endswith=f"@{DOMAIN}"))
            TokenGroup.objects.bulk_create(TokenGroup(owner=u, name="team") for u in fill_users)
            groups = {g.owner_id: g for g in TokenGroup.objects.filter(owner__in=fill_users)}
            ApiToken.objects.bulk_create(
                ApiToken(
                    owner=u, name=name, group=groups[u.pk] if grouped else None,
                    prefix=f"sk-fill{u.pk % 100:02d}", digest=api_key_digest(f"fill-{u.pk}-{name}"),
                )
                for u in fill_users
                for name, grouped in (("production", True), ("staging", True), ("ci", False))
            )  # fmt: skip
        rows = ApiToken.objects.filter(owner__email__endswith=f"@{DOMAIN}").values_list(
            "owner_id", "owner__email", "pk", "name", "group_id", "group__name"
        )
        # fill-0 first: the heavy user.
        keyed = sorted(rows, key=lambda r: (int(r[1].split("@")[0].split("-")[1]), r[2]))
        return [(user, key, name, group, group_name or "") for user, _, key, name, group,
                group_name in keyed]  # fmt: skip

    def _insert(self, rng, keys, rows, since, now, heavy_share) -> None:
        """Generate the rows inside PostgreSQL, a million per statement, in time order as a live
        system writes them (each index grows at its end). No row crosses the wire, which beats
        COPY from Python by far: the generating is the slow part, not the loading."""
        step = (now - since).total_seconds() / rows
        base = f"fill-{int(time.time())}-{rng.randrange(10**6)}"
        heavy = sum(1 for k in keys if k[0] == keys[0][0])
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE fill_keys (idx int PRIMARY KEY, user_id bigint, key_id bigint,"
                " key_name text, group_id bigint, group_name text)"
            )
            cursor.executemany(
                "INSERT INTO fill_keys VALUES (%s, %s, %s, %s, %s, %s)",
                [(i, *key) for i, key in enumerate(keys)],
            )
            cursor.execute(
                "CREATE TEMP TABLE fill_models (idx int PRIMARY KEY, model_id text,"
                " price_in bigint, price_out bigint)"
            )
            weighted = [m for m in MODELS for _ in range(m[1])]
            cursor.executemany(
                "INSERT INTO fill_models VALUES (%s, %s, %s, %s)",
                [(i, m[0], m[2], m[3]) for i, m in enumerate(weighted)],
            )
        # A transaction per million rows. Every row points at a key read from the database just
        # above, so the foreign-key triggers (queued per row until the commit) are skipped where
        # the role may: they would double the time of the whole fill.
        superuser = connection.cursor().connection.info.parameter_status("is_superuser") == "on"
        for first in range(0, rows, 1_000_000):
            last = min(rows, first + 1_000_000) - 1
            with transaction.atomic(), connection.cursor() as cursor:
                if superuser:
                    cursor.execute("SET LOCAL session_replication_role = replica")
                cursor.execute(
                    FILL_SQL.format(log=RequestLog._meta.db_table),
                    {"first": first, "last": last, "base": base, "since": since, "step": step,
                     "heavy": heavy_share, "heavy_keys": heavy, "keys": len(keys),
                     "models": len(weighted)},
                )  # fmt: skip
            self.stdout.write(f"{last + 1:,} rows", ending="\n")
            self.stdout.flush()
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE fill_keys, fill_models")

    def _rollups(self, since) -> None:
        """Recount the rollups of the filled hours in SQL (usage_rollups_rebuild is the ORM's
        version, too slow for millions of rows)."""
        log, rollup = RequestLog._meta.db_table, UsageRollup._meta.db_table
        hour = since.replace(minute=0, second=0, microsecond=0)
        with connection.cursor() as cursor:
            # Table names are the models' own, never input.
            cursor.execute(f"DELETE FROM {rollup} WHERE hour >= %s", [hour])  # noqa: S608
            cursor.execute(
                f"""
                INSERT INTO {rollup} (hour, user_id, organization_id, key_id, group_id, model_id,
                    call_type, requests, errors, prompt_tokens, completion_tokens, cached_tokens,
                    cost_micros, duration_ms)
                SELECT date_trunc('hour', created_at, 'UTC'), user_id,
                       COALESCE(organization_id, 0), COALESCE(api_token_id, 0),
                       COALESCE(group_id, 0), model_id, call_type, count(*),
                       count(*) FILTER (WHERE status_code >= 400), sum(prompt_tokens),
                       sum(completion_tokens), sum(cached_tokens), sum(cost_micros),
                       sum(duration_ms)
                  FROM {log} WHERE created_at >= %s
                 GROUP BY 1, 2, 3, 4, 5, 6, 7
                """,  # noqa: S608
                [hour],
            )
            self.stdout.write(f"{cursor.rowcount:,} rollup rows")
