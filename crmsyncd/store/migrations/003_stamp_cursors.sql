-- Cursors are placed by the records' own stamps only: how far a read reached on a server's clock
-- (its Date header) is not kept, since that clock may disagree with the stamps it serves.
ALTER TABLE sync_cursor DROP COLUMN IF EXISTS read_until;
