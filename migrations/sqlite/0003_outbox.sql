-- airlock schema v3: the notification outbox. A row per (approval lifecycle event,
-- configured channel) is inserted in the same transaction that seals the event onto
-- the audit chain; the dispatcher claims due rows (a lease naming the airlock
-- instance), delivers them in order per approval and channel, and settles them.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    approval_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    line TEXT NOT NULL,
    created TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at TEXT NOT NULL,
    claimed_by TEXT,
    claimed_until TEXT,
    done TEXT,
    outcome TEXT,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (done, next_at);
CREATE INDEX outbox_order ON outbox (approval_id, channel, id);
-- What a channel needs to update the message it posted for an approval (Slack channel
-- and ts, Teams conversation and activity id).
CREATE TABLE channel_messages (
    approval_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (approval_id, channel)
);
-- Things done once per approval whatever the replica (a reminder, an escalation).
CREATE TABLE approval_marks (
    approval_id TEXT NOT NULL,
    mark TEXT NOT NULL,
    time TEXT NOT NULL,
    PRIMARY KEY (approval_id, mark)
);
