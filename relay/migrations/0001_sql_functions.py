"""The relay's hold and settlement as PostgreSQL functions: one round trip each.

relay/accounting.py has the same rules in the ORM (used on SQLite); tests run both paths on
PostgreSQL and expect identical books.
"""

from django.db import migrations

CREATE = r"""
CREATE OR REPLACE FUNCTION relay_hold(
    p_request_id text, p_wallet_id bigint, p_token_id bigint, p_amount bigint,
    p_token_limited boolean, p_now timestamptz, p_expires timestamptz
) RETURNS integer LANGUAGE plpgsql AS $$
-- 0: held; 1: the wallet cannot cover it; 2: the key's credit limit cannot.
BEGIN
    UPDATE billing_wallet SET held_micros = held_micros + p_amount
     WHERE id = p_wallet_id AND balance_micros - held_micros >= p_amount;
    IF NOT FOUND THEN
        RETURN 1;
    END IF;
    IF p_token_limited THEN
        UPDATE accounts_apitoken SET credit_used_micros = credit_used_micros + p_amount
         WHERE id = p_token_id AND credit_used_micros + p_amount <= credit_limit_micros;
        IF NOT FOUND THEN
            -- Same statement, same transaction: undo the wallet reservation.
            UPDATE billing_wallet SET held_micros = held_micros - p_amount WHERE id = p_wallet_id;
            RETURN 2;
        END IF;
    END IF;
    INSERT INTO billing_hold (request_id, wallet_id, api_token_id, group_id, membership_id,
                              amount_micros, token_credit_micros, tokens, status, created_at,
                              expires_at, closed_at)
    VALUES (p_request_id, p_wallet_id, p_token_id, NULL, NULL, p_amount,
            CASE WHEN p_token_limited THEN p_amount ELSE 0 END, 0, 'open', p_now, p_expires, NULL);
    RETURN 0;
END $$;

CREATE OR REPLACE FUNCTION relay_settle(
    p_request_id text, p_wallet_id bigint, p_token_id bigint, p_hold bigint, p_cost bigint,
    p_token_credit bigint, p_quota_tokens bigint, p_touch_last_used boolean,
    p_description text, p_now timestamptz
) RETURNS bigint LANGUAGE plpgsql AS $$
-- Returns the micro-USD charged: the cost, never more than the hold.
DECLARE
    v_charged bigint := GREATEST(0, LEAST(p_cost, p_hold));
    v_balance bigint;
BEGIN
    IF p_hold > 0 OR p_cost > 0 THEN
        UPDATE billing_hold
           SET status = CASE WHEN v_charged > 0 THEN 'settled' ELSE 'released' END,
               closed_at = p_now
         WHERE request_id = p_request_id AND status = 'open';
        IF FOUND THEN
            UPDATE billing_wallet
               SET held_micros = held_micros - p_hold, balance_micros = balance_micros - v_charged
             WHERE id = p_wallet_id
            RETURNING balance_micros INTO v_balance;
            IF p_token_credit > 0 THEN
                UPDATE accounts_apitoken
                   SET credit_used_micros = credit_used_micros + v_charged - p_token_credit
                 WHERE id = p_token_id;
            END IF;
        ELSIF v_charged > 0 THEN
            -- The sweep released the hold (the call outlived it): charge what is still there.
            UPDATE billing_wallet SET balance_micros = balance_micros - v_charged
             WHERE id = p_wallet_id AND balance_micros - held_micros >= v_charged
            RETURNING balance_micros INTO v_balance;
            IF NOT FOUND THEN
                v_charged := 0;
            END IF;
        END IF;
        IF v_charged > 0 THEN
            INSERT INTO billing_ledgerentry (wallet_id, kind, amount_micros, balance_after_micros,
                                             idempotency_key, reference, description,
                                             created_by_id, created_at)
            VALUES (p_wallet_id, 'usage', -v_charged, v_balance, 'usage:' || p_request_id,
                    p_request_id, left(p_description, 255), NULL, p_now);
        END IF;
    END IF;
    IF p_quota_tokens > 0 OR p_touch_last_used THEN
        UPDATE accounts_apitoken
           SET quota_used_tokens = quota_used_tokens + p_quota_tokens,
               last_used_at = CASE WHEN p_touch_last_used THEN p_now ELSE last_used_at END
         WHERE id = p_token_id;
    END IF;
    RETURN v_charged;
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS relay_hold(text, bigint, bigint, bigint, boolean, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS relay_settle(text, bigint, bigint, bigint, bigint, bigint, bigint, boolean,
                                     text, timestamptz);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE.replace("%", "%%"))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("billing", "0003_hold_token_credit"),
        ("usage", "0001_initial"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
