-- airlock schema v2: the airlock instance that claimed an approval for forwarding
-- (status `forwarding`), so start-up recovery can tell a crashed forward from a live one.
ALTER TABLE approvals ADD COLUMN forwarder TEXT;
