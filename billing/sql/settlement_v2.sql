-- Version 2 of billing's settlement functions (version 1: settlement_v1.sql, still the source of
-- billing_hold). Every settled call is now also counted in its hour's usage rollup ({rollup}) in
-- the same transaction, so usage statistics are never behind the logs and outlive them.
--
-- billing_log now answers NULL for a replay, an empty object for a new row, and the replaced
-- placeholder row (as JSON) when a late settlement replaces the sweep's row, whose count then
-- leaves the rollups. The rollup rows are locked last, after the wallet, on every path.
-- The ORM twin is billing/services.py call_settle_orm with usage/services.py usage_rollup_add.

DROP FUNCTION IF EXISTS billing_log(jsonb, bigint);

CREATE OR REPLACE FUNCTION billing_rollup(p_log jsonb, p_cost bigint, p_sign integer)
RETURNS void LANGUAGE plpgsql AS $$
-- Count one call (p_sign = -1: take it back) in the rollup row of its UTC hour, key, group,
-- model and call type. The row of a busy key and model exists nearly always, so the update
-- comes first (one index probe); the insert, for an hour's first call, settles a race with
-- ON CONFLICT. The log's fields are read straight from the JSON: building the whole row
-- type for a dozen of its columns cost more than the rest of this function.
DECLARE
    v_hour timestamptz := date_trunc('hour', (p_log->>'created_at')::timestamptz, 'UTC');
    v_user bigint := (p_log->>'user_id')::bigint;
    v_org bigint := COALESCE((p_log->>'organization_id')::bigint, 0);
    v_key bigint := COALESCE((p_log->>'api_token_id')::bigint, 0);
    v_group bigint := COALESCE((p_log->>'group_id')::bigint, 0);
    v_model text := p_log->>'model_id';
    v_type text := p_log->>'call_type';
    v_errors integer := CASE WHEN (p_log->>'status_code')::integer >= 400 THEN p_sign ELSE 0 END;
    v_prompt bigint := p_sign * COALESCE((p_log->>'prompt_tokens')::bigint, 0);
    v_completion bigint := p_sign * COALESCE((p_log->>'completion_tokens')::bigint, 0);
    v_cached bigint := p_sign * COALESCE((p_log->>'cached_tokens')::bigint, 0);
    v_duration bigint := p_sign * COALESCE((p_log->>'duration_ms')::bigint, 0);
BEGIN
    UPDATE {rollup}
       SET requests = requests + p_sign, errors = errors + v_errors,
           prompt_tokens = prompt_tokens + v_prompt,
           completion_tokens = completion_tokens + v_completion,
           cached_tokens = cached_tokens + v_cached,
           cost_micros = cost_micros + p_sign * p_cost, duration_ms = duration_ms + v_duration
     WHERE user_id = v_user AND hour = v_hour AND organization_id = v_org AND key_id = v_key
       AND group_id = v_group AND model_id = v_model AND call_type = v_type;
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO {rollup} AS r (hour, user_id, organization_id, key_id, group_id, model_id,
                               call_type, requests, errors, prompt_tokens, completion_tokens,
                               cached_tokens, cost_micros, duration_ms)
    VALUES (v_hour, v_user, v_org, v_key, v_group, v_model, v_type, p_sign, v_errors, v_prompt,
            v_completion, v_cached, p_sign * p_cost, v_duration)
    ON CONFLICT (user_id, hour, organization_id, key_id, group_id, model_id, call_type)
    DO UPDATE SET requests = r.requests + EXCLUDED.requests,
                  errors = r.errors + EXCLUDED.errors,
                  prompt_tokens = r.prompt_tokens + EXCLUDED.prompt_tokens,
                  completion_tokens = r.completion_tokens + EXCLUDED.completion_tokens,
                  cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
                  cost_micros = r.cost_micros + EXCLUDED.cost_micros,
                  duration_ms = r.duration_ms + EXCLUDED.duration_ms;
END $$;

CREATE OR REPLACE FUNCTION billing_log(p_log jsonb, p_cost bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
-- The request log row, every column from the JSON object (typed by the table). NULL when the
-- request already has one: the settlement is a replay. The one row it may replace is the
-- placeholder the sweep writes for a call whose relay process looked dead; then the answer is
-- that row as it was, else an empty object.
DECLARE
    v_old {log}%ROWTYPE;
BEGIN
    -- In FROM, not as (f(...)).*: that form would call the function once per column.
    INSERT INTO {log}
    SELECT r.* FROM jsonb_populate_record(
        NULL::{log},
        p_log || jsonb_build_object(
            'id', nextval(pg_get_serial_sequence('{log}', 'id')), 'cost_micros', p_cost
        )
    ) r
    ON CONFLICT (request_id) DO NOTHING;
    IF FOUND THEN
        RETURN '{{}}'::jsonb;
    END IF;
    SELECT * INTO v_old FROM {log}
     WHERE request_id = p_log->>'request_id' AND error_code = 'relay_process_lost'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE {log} SET {log_set}
      FROM jsonb_populate_record(NULL::{log}, p_log || jsonb_build_object('cost_micros', p_cost)) n
     WHERE {log}.id = v_old.id;
    RETURN to_jsonb(v_old);
END $$;

CREATE OR REPLACE FUNCTION billing_settle(
    p_request_id text, p_wallet_id bigint, p_key_id bigint, p_held boolean, p_hold bigint,
    p_cost bigint, p_used_tokens bigint, p_touch_last_used boolean, p_description text,
    p_now timestamptz, p_log jsonb,
    OUT charged bigint, OUT low_balance boolean,
    OUT key_used bigint, OUT key_quota bigint, OUT key_alerted integer,
    OUT group_used bigint, OUT group_quota bigint, OUT group_alerted integer,
    OUT replayed boolean
) LANGUAGE plpgsql AS $$
-- Charges the cost, never more than the hold, and counts the tokens used, never more than the
-- hold reserved. Returns the quotas it moved (used incl. holds in flight, quota, highest
-- threshold alerted) and whether the wallet just went below its low-balance threshold.
-- Idempotent on the request id: the log row comes first and a second settlement finds it.
DECLARE
    v_key_credit_held bigint;
    v_group_credit_held bigint;
    v_tokens bigint;
    v_key_tokens_held bigint;
    v_group_tokens_held bigint;
    v_group_id bigint;
    v_open boolean;
    v_counted bigint;
    v_balance bigint;
    v_threshold bigint;
    v_alerted_at timestamptz;
    v_replaced jsonb;
BEGIN
    charged := GREATEST(0, LEAST(p_cost, p_hold));
    low_balance := false;
    replayed := false;
    v_replaced := billing_log(p_log, charged);
    IF v_replaced IS NULL THEN
        replayed := true;
        SELECT cost_micros INTO charged FROM {log} WHERE request_id = p_request_id;
        RETURN;
    END IF;
    IF NOT p_held THEN
        IF p_touch_last_used THEN
            UPDATE {key} SET last_used_at = p_now WHERE id = p_key_id;
        END IF;
        PERFORM billing_rollup(p_log, 0, 1);
        RETURN;
    END IF;
    UPDATE {hold}
       SET status = CASE WHEN charged > 0 THEN 'settled' ELSE 'released' END, closed_at = p_now
     WHERE request_id = p_request_id AND status = 'open'
    RETURNING key_credit_micros, group_credit_micros, tokens, key_quota_tokens,
              group_quota_tokens, group_id
         INTO v_key_credit_held, v_group_credit_held, v_tokens, v_key_tokens_held,
              v_group_tokens_held, v_group_id;
    v_open := FOUND;
    IF NOT v_open THEN
        -- The sweep released the hold (the call outlived its lease): its reservations are
        -- gone, so count the usage itself, and charge what the wallet still has.
        SELECT key_credit_micros, group_credit_micros, tokens, key_quota_tokens,
               group_quota_tokens, group_id
          INTO v_key_credit_held, v_group_credit_held, v_tokens, v_key_tokens_held,
               v_group_tokens_held, v_group_id
          FROM {hold} WHERE request_id = p_request_id;
        IF NOT FOUND THEN
            v_key_credit_held := 0; v_group_credit_held := 0; v_tokens := 0;
            v_key_tokens_held := 0; v_group_tokens_held := 0;
        END IF;
    END IF;
    v_counted := GREATEST(0, LEAST(p_used_tokens, v_tokens));
    IF v_key_credit_held > 0 OR v_key_tokens_held > 0 OR p_touch_last_used THEN
        UPDATE {key}
           SET credit_used_micros = credit_used_micros + CASE WHEN v_key_credit_held > 0
                   THEN charged - CASE WHEN v_open THEN v_key_credit_held ELSE 0 END ELSE 0 END,
               quota_used_tokens = quota_used_tokens + CASE WHEN v_key_tokens_held > 0
                   THEN v_counted - CASE WHEN v_open THEN v_key_tokens_held ELSE 0 END ELSE 0 END,
               last_used_at = CASE WHEN p_touch_last_used THEN p_now ELSE last_used_at END
         WHERE id = p_key_id
        RETURNING quota_used_tokens, quota_tokens, quota_alerted_percent
             INTO key_used, key_quota, key_alerted;
        IF v_key_tokens_held = 0 THEN
            key_used := NULL; key_quota := NULL; key_alerted := NULL;
        END IF;
    END IF;
    IF v_group_credit_held > 0 OR v_group_tokens_held > 0 THEN
        UPDATE {group}
           SET credit_used_micros = credit_used_micros + CASE WHEN v_group_credit_held > 0
                   THEN charged - CASE WHEN v_open THEN v_group_credit_held ELSE 0 END ELSE 0 END,
               quota_used_tokens = quota_used_tokens + CASE WHEN v_group_tokens_held > 0
                   THEN v_counted - CASE WHEN v_open THEN v_group_tokens_held ELSE 0 END ELSE 0 END
         WHERE id = v_group_id
        RETURNING quota_used_tokens, quota_tokens, quota_alerted_percent
             INTO group_used, group_quota, group_alerted;
        IF v_group_tokens_held = 0 THEN
            group_used := NULL; group_quota := NULL; group_alerted := NULL;
        END IF;
    END IF;
    IF v_open THEN
        UPDATE {wallet}
           SET held_micros = held_micros - p_hold, balance_micros = balance_micros - charged
         WHERE id = p_wallet_id
        RETURNING balance_micros, low_balance_threshold_micros, low_balance_alerted_at
             INTO v_balance, v_threshold, v_alerted_at;
    ELSIF charged > 0 THEN
        -- Late: only what calls in flight do not hold, and nothing rather than a part.
        UPDATE {wallet} SET balance_micros = balance_micros - charged
         WHERE id = p_wallet_id AND balance_micros - held_micros >= charged
        RETURNING balance_micros, low_balance_threshold_micros, low_balance_alerted_at
             INTO v_balance, v_threshold, v_alerted_at;
        IF NOT FOUND THEN
            -- Take back the credit counted above (the rows are still ours).
            IF v_key_credit_held > 0 THEN
                UPDATE {key} SET credit_used_micros = credit_used_micros - charged
                 WHERE id = p_key_id;
            END IF;
            IF v_group_credit_held > 0 THEN
                UPDATE {group} SET credit_used_micros = credit_used_micros - charged
                 WHERE id = v_group_id;
            END IF;
            charged := 0;
            UPDATE {log} SET cost_micros = 0 WHERE request_id = p_request_id;
        END IF;
    END IF;
    IF charged > 0 THEN
        INSERT INTO {ledger} (wallet_id, kind, amount_micros, balance_after_micros,
                              idempotency_key, reference, description, created_by_id, created_at)
        VALUES (p_wallet_id, 'usage', -charged, v_balance, 'usage:' || p_request_id,
                p_request_id, left(p_description, 255), NULL, p_now);
        low_balance := v_threshold IS NOT NULL AND v_balance < v_threshold
                       AND v_alerted_at IS NULL;
    END IF;
    -- The rollups last, after the wallet: one lock order on every path.
    IF v_replaced <> '{{}}'::jsonb THEN
        PERFORM billing_rollup(v_replaced, (v_replaced->>'cost_micros')::bigint, -1);
    END IF;
    PERFORM billing_rollup(p_log, charged, 1);
END $$;
