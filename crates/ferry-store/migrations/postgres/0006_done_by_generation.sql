-- Which run of a pair transferred an item: each new run of a finished pair
-- is a new generation, and a run resumed after a crash keeps its own. A
-- resumed task counts what its interrupted attempts transferred as
-- transferred, as an uninterrupted run would have.
ALTER TABLE sync_runs ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_done ADD COLUMN transferred_gen BIGINT;
