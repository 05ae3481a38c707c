-- A change feed's own continuation (connectors/port.py Checkpoint.token), opaque to the engine,
-- saved with the cursor it belongs to and handed back to the same feed at the next pass. NULL for
-- feeds that re-anchor on the record stamps alone (ECOSIRE, the REST CRM, HubSpot's search).
ALTER TABLE sync_cursor ADD COLUMN token jsonb;
