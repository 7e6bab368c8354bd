-- Holds and settlements of relayed calls as PostgreSQL functions: one round trip each.
--
-- The same rules as the ORM backend in billing/services.py (hold_acquire, call_settle_orm);
-- tests/billing/test_holds.py runs both on the same inputs and expects the same rows.
-- Loaded by a billing migration: {wallet}, {hold}, {ledger}, {key}, {group} and {log} are the
-- tables' names (Model._meta.db_table), {log_update} the columns a settlement rewrites on a
-- placeholder log row. A new version of this file gets a new name and a migration of its own.
--
-- Row order on every path: hold, key, group, wallet (the log row is a new row of its own). The wallet, which every call of an
-- owner shares, is locked last and so for the shortest time (a lock lasts until the commit).

CREATE OR REPLACE FUNCTION billing_log(p_log jsonb, p_cost bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
-- The request log row, every column from the JSON object (typed by the table). False when the
-- request already has one: the settlement is a replay. The one row it may replace is the
-- placeholder the sweep writes for a call whose relay process looked dead.
BEGIN
    -- In FROM, not as (f(...)).*: that form would call the function once per column.
    INSERT INTO {log}
    SELECT r.* FROM jsonb_populate_record(
        NULL::{log},
        p_log || jsonb_build_object(
            'id', nextval(pg_get_serial_sequence('{log}', 'id')), 'cost_micros', p_cost
        )
    ) r
    ON CONFLICT (request_id) DO UPDATE SET {log_update}
     WHERE {log}.error_code = 'relay_process_lost';
    RETURN FOUND;
END $$;

CREATE OR REPLACE FUNCTION billing_hold(
    p_request_id text, p_wallet_id bigint, p_key_id bigint, p_group_id bigint,
    p_amount bigint, p_tokens bigint, p_key_credit boolean, p_key_quota boolean,
    p_group_credit boolean, p_group_quota boolean, p_model text, p_call_type text,
    p_now timestamptz, p_expires timestamptz
) RETURNS integer LANGUAGE plpgsql AS $$
-- 0: held (or held already: a retry whose first try committed). Refused, with nothing
-- reserved: 1 the wallet, 2 the key's credit limit, 3 the key's token quota, 4 the group's
-- token quota, 5 the group's credit limit (billing.holds.HoldRefusal).
DECLARE
    v_key boolean := p_key_credit OR p_key_quota;
    v_group boolean := p_group_credit OR p_group_quota;
    v_key_credit bigint := CASE WHEN p_key_credit THEN p_amount ELSE 0 END;
    v_key_tokens bigint := CASE WHEN p_key_quota THEN p_tokens ELSE 0 END;
    v_group_credit bigint := CASE WHEN p_group_credit THEN p_amount ELSE 0 END;
    v_group_tokens bigint := CASE WHEN p_group_quota THEN p_tokens ELSE 0 END;
    v_tokens_ok boolean;
    v_refusal integer := 0;
BEGIN
    INSERT INTO {hold} (request_id, wallet_id, key_id, group_id, membership_id, model_id,
                        call_type, amount_micros, key_credit_micros, group_credit_micros, tokens,
                        key_quota_tokens, group_quota_tokens, status, created_at, expires_at,
                        closed_at)
    VALUES (p_request_id, p_wallet_id, p_key_id, CASE WHEN v_group THEN p_group_id END, NULL,
            p_model, p_call_type, p_amount, v_key_credit, v_group_credit, p_tokens,
            v_key_tokens, v_group_tokens, 'open', p_now, p_expires, NULL)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF v_key THEN
        -- A limit removed since the relay cached the key (NULL) no longer refuses.
        UPDATE {key}
           SET credit_used_micros = credit_used_micros + v_key_credit,
               quota_used_tokens = quota_used_tokens + v_key_tokens
         WHERE id = p_key_id
           AND (credit_limit_micros IS NULL OR credit_used_micros + v_key_credit <= credit_limit_micros)
           AND (quota_tokens IS NULL OR quota_used_tokens + v_key_tokens <= quota_tokens);
        IF NOT FOUND THEN
            SELECT quota_tokens IS NULL OR quota_used_tokens + v_key_tokens <= quota_tokens
              INTO v_tokens_ok FROM {key} WHERE id = p_key_id;
            v_refusal := CASE WHEN v_tokens_ok THEN 2 ELSE 3 END;
        END IF;
    END IF;
    IF v_refusal = 0 AND v_group THEN
        UPDATE {group}
           SET credit_used_micros = credit_used_micros + v_group_credit,
               quota_used_tokens = quota_used_tokens + v_group_tokens
         WHERE id = p_group_id
           AND (credit_limit_micros IS NULL OR credit_used_micros + v_group_credit <= credit_limit_micros)
           AND (quota_tokens IS NULL OR quota_used_tokens + v_group_tokens <= quota_tokens);
        IF NOT FOUND THEN
            SELECT quota_tokens IS NULL OR quota_used_tokens + v_group_tokens <= quota_tokens
              INTO v_tokens_ok FROM {group} WHERE id = p_group_id;
            v_refusal := CASE WHEN v_tokens_ok THEN 5 ELSE 4 END;
        END IF;
    END IF;
    IF v_refusal = 0 THEN
        UPDATE {wallet} SET held_micros = held_micros + p_amount
         WHERE id = p_wallet_id AND balance_micros - held_micros >= p_amount;
        IF NOT FOUND THEN
            v_refusal := 1;
        END IF;
    END IF;
    IF v_refusal <> 0 THEN
        -- One statement, one transaction: undo what was reserved before the refusal.
        DELETE FROM {hold} WHERE request_id = p_request_id;
        IF v_key AND v_refusal NOT IN (2, 3) THEN
            UPDATE {key}
               SET credit_used_micros = credit_used_micros - v_key_credit,
                   quota_used_tokens = quota_used_tokens - v_key_tokens
             WHERE id = p_key_id;
        END IF;
        IF v_group AND v_refusal = 1 THEN
            UPDATE {group}
               SET credit_used_micros = credit_used_micros - v_group_credit,
                   quota_used_tokens = quota_used_tokens - v_group_tokens
             WHERE id = p_group_id;
        END IF;
    END IF;
    RETURN v_refusal;
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
BEGIN
    charged := GREATEST(0, LEAST(p_cost, p_hold));
    low_balance := false;
    replayed := false;
    IF NOT billing_log(p_log, charged) THEN
        replayed := true;
        SELECT cost_micros INTO charged FROM {log} WHERE request_id = p_request_id;
        RETURN;
    END IF;
    IF NOT p_held THEN
        IF p_touch_last_used THEN
            UPDATE {key} SET last_used_at = p_now WHERE id = p_key_id;
        END IF;
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
END $$;
