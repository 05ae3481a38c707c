-- Pruning the history (CRMSYNCD_HISTORY_DAYS, `crmsyncd prune`, the daemon's daily job) finds
-- the old rows by index instead of scanning tables that grow all the time: passes by their start,
-- resolved error rows by their resolution (the open ones, the queue itself, are never pruned).
CREATE INDEX sync_run_started_at ON sync_run (started_at);
-- The later pass of the same kind that lets a pass go (the last of each kind is kept); it also
-- serves `status`'s last pass of a kind.
CREATE INDEX sync_run_kind_id ON sync_run (kind, id);
CREATE INDEX sync_error_resolved_at ON sync_error (resolved_at) WHERE status = 'resolved';
