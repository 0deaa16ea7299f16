-- airlock schema v3: the notification outbox. A row per (approval lifecycle event,
-- configured channel) is inserted in the same transaction that seals the event onto
-- the audit chain; the dispatcher claims due rows (a lease naming the airlock
-- instance, FOR UPDATE SKIP LOCKED so each row goes to one replica), delivers them in
-- order per approval and channel, and settles them.
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    approval_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    line TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at TIMESTAMPTZ NOT NULL,
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ,
    done TIMESTAMPTZ,
    outcome TEXT,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (next_at) WHERE done IS NULL;
CREATE INDEX outbox_order ON outbox (approval_id, channel, id);
CREATE TABLE channel_messages (
    approval_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (approval_id, channel)
);
CREATE TABLE approval_marks (
    approval_id TEXT NOT NULL,
    mark TEXT NOT NULL,
    time TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (approval_id, mark)
);
