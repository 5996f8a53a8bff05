-- The source's ctime when it was copied: a chmod or chown since changes
-- it (and not size or mtime), so a rerun checks that item in full.
ALTER TABLE sync_done ADD COLUMN src_ctime_ns BIGINT;
