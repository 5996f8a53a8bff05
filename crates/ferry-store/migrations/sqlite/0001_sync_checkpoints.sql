-- Checkpoints of `ferry sync` runs: a run is identified by its source,
-- destination and options; the done set lets a rerun skip finished items.
CREATE TABLE sync_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key     TEXT    NOT NULL UNIQUE,
    src         TEXT    NOT NULL,
    dst         TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE sync_done (
    run_id    BIGINT NOT NULL REFERENCES sync_runs(id) ON DELETE CASCADE,
    dir       TEXT   NOT NULL,
    name      TEXT   NOT NULL,
    size      BIGINT NOT NULL,
    mtime_ns  BIGINT NOT NULL,
    PRIMARY KEY (run_id, dir, name)
);
