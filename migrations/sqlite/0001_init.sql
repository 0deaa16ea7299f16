-- airlock schema v1: approvals, votes, audit events and signed checkpoints.
CREATE TABLE approvals (
    id          TEXT PRIMARY KEY,
    status      TEXT NOT NULL,            -- pending | approved | denied | expired | consumed | cancelled
    agent       TEXT NOT NULL,
    owner       TEXT,
    digest      TEXT NOT NULL,            -- SHA-256 binding method, URL, material headers, body
    body_sha256 TEXT NOT NULL,
    rules       TEXT NOT NULL,            -- JSON array of matched rule names
    policy      TEXT NOT NULL,            -- JSON ApprovalPolicy
    method      TEXT NOT NULL,
    upstream    TEXT NOT NULL,
    host        TEXT,
    url         TEXT NOT NULL,            -- normalized path and query the upstream sees
    justification TEXT,
    show        TEXT,                     -- JSON object of the rule's `show` fields
    request_id  TEXT NOT NULL,
    created     TEXT NOT NULL,            -- RFC 3339 UTC
    expires     TEXT NOT NULL,
    decided     TEXT,
    decided_by  TEXT,
    reason      TEXT,
    consumed    TEXT
);
CREATE INDEX approvals_active ON approvals (agent, digest, status);
CREATE INDEX approvals_status ON approvals (status, expires);

CREATE TABLE votes (
    approval_id TEXT NOT NULL REFERENCES approvals(id),
    reviewer    TEXT NOT NULL,
    decision    TEXT NOT NULL,            -- approve | deny
    reason      TEXT,
    time        TEXT NOT NULL,
    PRIMARY KEY (approval_id, reviewer)
);

CREATE TABLE audit_events (
    seq   INTEGER PRIMARY KEY,
    time  TEXT NOT NULL,
    event TEXT NOT NULL,
    hash  TEXT NOT NULL,
    line  TEXT NOT NULL                   -- the sealed event as canonical JSONL (what the hash covers)
);

CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL,
    time      TEXT NOT NULL,
    signature TEXT NOT NULL
);
