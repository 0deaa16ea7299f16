-- airlock schema v1 (PostgreSQL): approvals, votes, audit events and signed checkpoints.
CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    agent         TEXT NOT NULL,
    owner         TEXT,
    digest        TEXT NOT NULL,
    body_sha256   TEXT NOT NULL,
    rules         JSONB NOT NULL,
    policy        JSONB NOT NULL,
    method        TEXT NOT NULL,
    upstream      TEXT NOT NULL,
    host          TEXT,
    url           TEXT NOT NULL,
    justification TEXT,
    show          JSONB,
    request_id    TEXT NOT NULL,
    created       TIMESTAMPTZ NOT NULL,
    expires       TIMESTAMPTZ NOT NULL,
    decided       TIMESTAMPTZ,
    decided_by    TEXT,
    reason        TEXT,
    consumed      TIMESTAMPTZ
);
CREATE INDEX approvals_active ON approvals (agent, digest, status);
CREATE INDEX approvals_status ON approvals (status, expires);

CREATE TABLE votes (
    approval_id TEXT NOT NULL REFERENCES approvals(id),
    reviewer    TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT,
    time        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (approval_id, reviewer)
);

CREATE TABLE audit_events (
    seq   BIGINT PRIMARY KEY,
    time  TIMESTAMPTZ NOT NULL,
    event TEXT NOT NULL,
    hash  TEXT NOT NULL,
    line  TEXT NOT NULL          -- the sealed event as canonical JSONL (what the hash covers)
);

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      TEXT NOT NULL,
    time      TIMESTAMPTZ NOT NULL,
    signature TEXT NOT NULL
);
