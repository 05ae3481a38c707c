-- Cursors are placed by the records' own stamps only: how far a read reached on a server's clock
-- (its Date header) is not kept, since that clock may disagree with the stamps it serves.
ALTER TABLE sync_cursor DROP COLUMN IF EXISTS read_until;
-- Set once a complete read has re-read the overlap window before the cursor long enough after the
-- cursor's record was read; a cursor that moves opens a new window.
ALTER TABLE sync_cursor ADD COLUMN window_settled boolean NOT NULL DEFAULT false;
