-- airlock schema v4: who sent a held request and how (issue: identities from the
-- organisation's IdP): JSON {"auth": key|jwt|mtls|none, "acting_for": person,
-- "client": address}. Older rows have none and read as unknown.
ALTER TABLE approvals ADD COLUMN requester TEXT;
-- The groups a reviewer voted as a member of (JSON array): a group from an OIDC
-- token counts towards a rule's quorum although no configured reviewer has it.
ALTER TABLE votes ADD COLUMN groups TEXT;
