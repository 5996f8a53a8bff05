-- HPC cache: API credentials, shares, backend targets, import/export tasks
-- (also the work queue, with leases), control-plane jobs and the namespace
-- index. Enums are stored as their wire strings, attributes, policies and
-- other JSON as TEXT. The columns that order pages and keysets use the
-- "C" collation so that PostgreSQL orders them byte-wise, like SQLite.

-- Bearer tokens, kept only as the SHA-256 (hex) of the token.
CREATE TABLE hpc_tokens (
    token_sha256  TEXT   PRIMARY KEY,
    project_id    TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

-- Access keys for request signing: the secret is kept as is because the
-- HMAC signature is computed from it.
CREATE TABLE hpc_access_keys (
    access_key  TEXT   PRIMARY KEY,
    secret_key  TEXT   NOT NULL,
    project_id  TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE hpc_shares (
    id             TEXT COLLATE "C" PRIMARY KEY,
    project_id     TEXT   NOT NULL,
    name           TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    sub_status     TEXT,
    size_gib       BIGINT NOT NULL,
    share_proto    TEXT   NOT NULL,
    share_type     TEXT   NOT NULL,
    metadata       TEXT   NOT NULL,
    gc_time_hours  BIGINT,
    created_at     BIGINT NOT NULL
);
-- A name is unique in its project among shares not DELETED ('400').
CREATE UNIQUE INDEX hpc_shares_live_name ON hpc_shares (project_id, name) WHERE status <> '400';
CREATE INDEX hpc_shares_project ON hpc_shares (project_id, created_at, id);

CREATE TABLE hpc_targets (
    id                TEXT COLLATE "C" PRIMARY KEY,
    share_id          TEXT   NOT NULL REFERENCES hpc_shares(id) ON DELETE CASCADE,
    project_id        TEXT   NOT NULL,
    file_system_path  TEXT   NOT NULL,
    bucket            TEXT   NOT NULL,
    endpoint          TEXT   NOT NULL,
    lifecycle         TEXT   NOT NULL,
    failure_message   TEXT,
    attributes        TEXT   NOT NULL,
    policy            TEXT   NOT NULL,
    created_at        BIGINT NOT NULL,
    UNIQUE (share_id, file_system_path)
);
CREATE INDEX hpc_targets_share ON hpc_targets (share_id, created_at, id);

-- Tasks, and the queue of work: a DOING task whose lease is NULL or expired
-- can be claimed by a worker, which then renews the lease while it runs.
CREATE TABLE hpc_tasks (
    id                TEXT COLLATE "C" PRIMARY KEY,
    share_id          TEXT   NOT NULL REFERENCES hpc_shares(id) ON DELETE CASCADE,
    project_id        TEXT   NOT NULL,
    task_type         TEXT   NOT NULL,
    status            TEXT   NOT NULL,
    src_target        TEXT   NOT NULL,
    src_prefix        TEXT,
    dest_target       TEXT   NOT NULL,
    dest_prefix       TEXT,
    attributes        TEXT,
    start_time        BIGINT NOT NULL,
    end_time          BIGINT,
    message           TEXT,
    total_files       BIGINT NOT NULL DEFAULT 0,
    done_files        BIGINT NOT NULL DEFAULT 0,
    skipped_files     BIGINT NOT NULL DEFAULT 0,
    failed_files      BIGINT NOT NULL DEFAULT 0,
    total_bytes       BIGINT NOT NULL DEFAULT 0,
    done_bytes        BIGINT NOT NULL DEFAULT 0,
    bytes_per_second  BIGINT NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_until       BIGINT
);
-- Listing a share's tasks, newest first; and those of one type (the usual
-- filter), which also counts them from the index alone.
CREATE INDEX hpc_tasks_share_start ON hpc_tasks (share_id, start_time, id);
CREATE INDEX hpc_tasks_share_type_start ON hpc_tasks (share_id, task_type, start_time, id);
-- Claiming the oldest task of a status.
CREATE INDEX hpc_tasks_status_start ON hpc_tasks (status, start_time, id);

-- Failure reports (CSV), apart from the task rows that are listed often.
CREATE TABLE hpc_task_reports (
    task_id  TEXT PRIMARY KEY REFERENCES hpc_tasks(id) ON DELETE CASCADE,
    csv      TEXT NOT NULL
);

CREATE TABLE hpc_jobs (
    id           TEXT COLLATE "C" PRIMARY KEY,
    project_id   TEXT   NOT NULL,
    job_type     TEXT   NOT NULL,
    status       TEXT   NOT NULL,
    begin_time   BIGINT NOT NULL,
    end_time     BIGINT,
    error_code   TEXT,
    fail_reason  TEXT,
    parent_id    TEXT,
    entities     TEXT   NOT NULL
);
CREATE INDEX hpc_jobs_parent ON hpc_jobs (parent_id, begin_time, id);
CREATE INDEX hpc_jobs_status ON hpc_jobs (status, begin_time, id);

-- The namespace index: one row per entry of a target, keyed by directory
-- ('' is the target root, no leading or trailing '/') and name.
CREATE TABLE hpc_ns_entries (
    target_id       TEXT   NOT NULL REFERENCES hpc_targets(id) ON DELETE CASCADE,
    dir             TEXT COLLATE "C" NOT NULL,
    name            TEXT COLLATE "C" NOT NULL,
    kind            TEXT   NOT NULL,
    size            BIGINT NOT NULL,
    mtime_ns        BIGINT NOT NULL,
    mode            BIGINT NOT NULL,
    uid             BIGINT NOT NULL,
    gid             BIGINT NOT NULL,
    etag            TEXT,
    state           TEXT   NOT NULL,
    local_size      BIGINT,
    local_mtime_ns  BIGINT,
    local_ctime_ns  BIGINT,
    local_ino       BIGINT,
    PRIMARY KEY (target_id, dir, name)
);
