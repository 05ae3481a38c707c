-- The claim walks the rows waiting to be merged in id order from where its previous batch ended.
-- An index with exactly the claim's predicate yields them in that order; the one it replaces
-- left out the state, and just after a bulk staging, before statistics catch up, the planner
-- preferred fetching every pending row and sorting them, for each batch of a hundred.
CREATE INDEX record_map_claimable ON record_map (entity, id)
    WHERE state = 'ok' AND (ecosire_pending IS NOT NULL OR crm_pending IS NOT NULL);
DROP INDEX record_map_pending;

-- Error rows by pair: every batch of settled pairs resolves theirs (and the folding of a CRM-only
-- row into its partner moves them), which without it scans the whole table, resolved rows and all.
CREATE INDEX sync_error_map_id ON sync_error (map_id);
