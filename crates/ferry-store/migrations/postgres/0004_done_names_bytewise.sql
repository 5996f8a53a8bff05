-- A rerun reads the done set of a directory in pages ordered by name and
-- merges them with the listing, which is in byte order. The "C" collation
-- orders (and indexes) names bytewise, whatever the database's locale.
ALTER TABLE sync_done ALTER COLUMN name TYPE TEXT COLLATE "C";
