-- A rerun reads the done set of a directory in pages ordered by name and
-- merges them with the listing, which is in byte order. SQLite's default
-- BINARY collation already orders TEXT bytewise: nothing to change.
SELECT 1;
