-- One row per linked pair (or per record not linked yet): both ids, each side's last known
-- canonical values (the merge base and the echo filter), and observations waiting to be merged.
CREATE TABLE record_map (
    id              bigserial PRIMARY KEY,
    entity          text NOT NULL,
    ecosire_id      text,
    crm_id          text,
    match_key       text,
    ecosire_snapshot jsonb,
    crm_snapshot    jsonb,
    ecosire_seen_at timestamptz,
    crm_seen_at     timestamptz,
    ecosire_pending jsonb,
    ecosire_pending_at timestamptz,
    crm_pending     jsonb,
    crm_pending_at  timestamptz,
    state           text NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'parked', 'deleted')),
    -- Set when a pass claims the row for writing and cleared when its bookkeeping lands: a row
    -- claimed by another run that never finished may have written remotely (look before creating).
    claim_run       bigint,
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    synced_at       timestamptz,
    CHECK (ecosire_id IS NOT NULL OR crm_id IS NOT NULL)
);
CREATE UNIQUE INDEX record_map_ecosire_id ON record_map (entity, ecosire_id) WHERE ecosire_id IS NOT NULL;
CREATE UNIQUE INDEX record_map_crm_id ON record_map (entity, crm_id) WHERE crm_id IS NOT NULL;
CREATE INDEX record_map_match_key ON record_map (entity, match_key) WHERE match_key IS NOT NULL;
CREATE INDEX record_map_pending ON record_map (entity, id)
    WHERE ecosire_pending IS NOT NULL OR crm_pending IS NOT NULL;

-- Delta cursors: the (updated_at, id) of the last record staged, per entity and side.
CREATE TABLE sync_cursor (
    entity      text NOT NULL,
    side        text NOT NULL CHECK (side IN ('ecosire', 'crm')),
    updated_at  timestamptz NOT NULL,
    record_id   text NOT NULL,
    saved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, side)
);

-- The retry queue: one open row per failing record; dead rows are kept and replayable.
CREATE TABLE sync_error (
    id              bigserial PRIMARY KEY,
    entity          text NOT NULL,
    side            text NOT NULL CHECK (side IN ('ecosire', 'crm')),
    record_id       text NOT NULL,
    map_id          bigint REFERENCES record_map (id) ON DELETE SET NULL,
    payload         jsonb NOT NULL,
    reason          text NOT NULL,
    error_class     text NOT NULL,
    attempts        integer NOT NULL DEFAULT 1,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead', 'resolved')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);
CREATE UNIQUE INDEX sync_error_open ON sync_error (entity, side, record_id) WHERE status <> 'resolved';
CREATE INDEX sync_error_due ON sync_error (next_attempt_at) WHERE status = 'pending';

-- History of passes with what they did.
CREATE TABLE sync_run (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('sync', 'retry')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'ok', 'failed', 'stopped')),
    counts      jsonb NOT NULL DEFAULT '{}'::jsonb,
    requests    jsonb NOT NULL DEFAULT '{}'::jsonb,
    error       text
);
