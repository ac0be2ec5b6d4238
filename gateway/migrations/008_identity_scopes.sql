-- Inventories govern the identities of one scope (`attributes.scope`): finding a scope's
-- identities among a million must not read them all.
CREATE INDEX identities_scope ON gateway.identities ((attributes->>'scope'));
