-- Version 3 of billing's settlement functions: organization members' monthly allowances.
-- billing_hold takes the member (p_membership_id) and counts the whole hold against their
-- allowance with the same conditional update as every other limit
-- (`WHERE used + amount <= allowance`), so concurrent calls of a member's keys can never spend
-- past it; billing_settle swaps that hold for the charge. billing_log and billing_rollup are
-- version 2's. The ORM twin is billing/services.py (hold_acquire, hold_settle, _late_settle,
-- holds_release_expired).
--
-- Row order on every path: hold, key, group, membership, wallet, then the rollups.

DROP FUNCTION IF EXISTS billing_hold(
    text, bigint, bigint, bigint, bigint, bigint, boolean, boolean, boolean, boolean, text, text,
    timestamptz, timestamptz
);

CREATE OR REPLACE FUNCTION billing_hold(
    p_request_id text, p_wallet_id bigint, p_key_id bigint, p_group_id bigint,
    p_amount bigint, p_tokens bigint, p_key_credit boolean, p_key_quota boolean,
    p_group_credit boolean, p_group_quota boolean, p_model text, p_call_type text,
    p_now timestamptz, p_expires timestamptz, p_membership_id bigint
) RETURNS integer LANGUAGE plpgsql AS $$
-- 0: held (or held already: a retry whose first try committed). Refused, with nothing
-- reserved: 1 the wallet, 2 the key's credit limit, 3 the key's token quota, 4 the group's
-- token quota, 5 the group's credit limit, 8 the member's monthly allowance
-- (billing.holds.HoldRefusal). p_membership_id (NULL for a personal key): the whole amount
-- counts against that member's allowance.
DECLARE
    v_key boolean := p_key_credit OR p_key_quota;
    v_group boolean := p_group_credit OR p_group_quota;
    v_key_credit bigint := CASE WHEN p_key_credit THEN p_amount ELSE 0 END;
    v_key_tokens bigint := CASE WHEN p_key_quota THEN p_tokens ELSE 0 END;
    v_group_credit bigint := CASE WHEN p_group_credit THEN p_amount ELSE 0 END;
    v_group_tokens bigint := CASE WHEN p_group_quota THEN p_tokens ELSE 0 END;
    v_tokens_ok boolean;
    v_refusal integer := 0;
    v_member bigint;
BEGIN
    IF p_membership_id IS NOT NULL THEN
        -- The relay's cached key may name a membership removed a moment ago: then nothing is
        -- counted (the key is refused once the cache turns). The share lock keeps the row
        -- until the commit.
        SELECT id INTO v_member FROM {member} WHERE id = p_membership_id FOR KEY SHARE;
    END IF;
    INSERT INTO {hold} (request_id, wallet_id, key_id, group_id, membership_id, model_id,
                        call_type, amount_micros, key_credit_micros, group_credit_micros, tokens,
                        key_quota_tokens, group_quota_tokens, status, created_at, expires_at,
                        closed_at)
    VALUES (p_request_id, p_wallet_id, p_key_id, CASE WHEN v_group THEN p_group_id END,
            v_member,
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
    IF v_refusal = 0 AND v_member IS NOT NULL THEN
        UPDATE {member} SET allowance_used_micros = allowance_used_micros + p_amount
         WHERE id = v_member
           AND (monthly_allowance_micros IS NULL
                OR allowance_used_micros + p_amount <= monthly_allowance_micros);
        IF NOT FOUND THEN
            v_refusal := 8;
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
        IF v_group AND v_refusal IN (1, 8) THEN
            UPDATE {group}
               SET credit_used_micros = credit_used_micros - v_group_credit,
                   quota_used_tokens = quota_used_tokens - v_group_tokens
             WHERE id = p_group_id;
        END IF;
        IF v_member IS NOT NULL AND v_refusal = 1 THEN
            UPDATE {member} SET allowance_used_micros = allowance_used_micros - p_amount
             WHERE id = v_member;
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
    v_member_id bigint;
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
              group_quota_tokens, group_id, membership_id
         INTO v_key_credit_held, v_group_credit_held, v_tokens, v_key_tokens_held,
              v_group_tokens_held, v_group_id, v_member_id;
    v_open := FOUND;
    IF NOT v_open THEN
        -- The sweep released the hold (the call outlived its lease): its reservations are
        -- gone, so count the usage itself, and charge what the wallet still has.
        SELECT key_credit_micros, group_credit_micros, tokens, key_quota_tokens,
               group_quota_tokens, group_id, membership_id
          INTO v_key_credit_held, v_group_credit_held, v_tokens, v_key_tokens_held,
               v_group_tokens_held, v_group_id, v_member_id
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
    IF v_member_id IS NOT NULL THEN
        -- The member's allowance counts what was charged (the hold it took becomes that).
        UPDATE {member}
           SET allowance_used_micros = GREATEST(0, allowance_used_micros + charged
                                                   - CASE WHEN v_open THEN p_hold ELSE 0 END)
         WHERE id = v_member_id;
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
            IF v_member_id IS NOT NULL THEN
                UPDATE {member}
                   SET allowance_used_micros = GREATEST(0, allowance_used_micros - charged)
                 WHERE id = v_member_id;
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
