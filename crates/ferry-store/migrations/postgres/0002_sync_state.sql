-- Keep the done set after a successful run as the known state of the pair:
-- an item whose source (size, mtime) and destination version (ETag or
-- listed modification time) are unchanged needs no request on the next run.
ALTER TABLE sync_runs ADD COLUMN finished BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE sync_done ADD COLUMN dst_version TEXT;
