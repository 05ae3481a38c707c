-- When a pair was first claimed by a run that has not finished it: a lookup for a create that
-- may have happened (records without a match key) searches the target from this moment on.
ALTER TABLE record_map ADD COLUMN claimed_at timestamptz;

-- A record deleted on one side: which side, when we learnt it, and how.
ALTER TABLE record_map ADD COLUMN deleted_side text CHECK (deleted_side IN ('ecosire', 'crm'));
ALTER TABLE record_map ADD COLUMN deleted_at timestamptz;

-- Reconciliation sweeps: the ids a full listing saw, compared with the map once it completes.
CREATE TABLE reconcile_seen (
    sweep      bigint NOT NULL,
    record_id  text NOT NULL,
    PRIMARY KEY (sweep, record_id)
);

ALTER TABLE sync_run DROP CONSTRAINT sync_run_kind_check;
ALTER TABLE sync_run ADD CONSTRAINT sync_run_kind_check CHECK (kind IN ('sync', 'retry', 'reconcile'));

-- partial: an entity could not be read this time; blocked: the delete guard stopped an entity;
-- error: the pass itself broke (database lost).
ALTER TABLE sync_run DROP CONSTRAINT sync_run_status_check;
ALTER TABLE sync_run ADD CONSTRAINT sync_run_status_check
    CHECK (status IN ('running', 'ok', 'partial', 'blocked', 'failed', 'stopped', 'error'));

-- How far (on the server's clock) the last completed read of a side reached: the next read starts
-- there less the overlap, so a quiet pass does not re-read the last burst of changes for ever.
ALTER TABLE sync_cursor ADD COLUMN read_until timestamptz;

-- The writes a claimed pair is about to make, per side (canonical values), recorded before any
-- remote call: after a kill, a value found equal to the intent is known as our own write, and a
-- create is looked up by what it actually sent.
ALTER TABLE record_map ADD COLUMN intent jsonb;
