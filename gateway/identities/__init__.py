"""Machine identities: the record, the registry, its cache, bulk imports and provisioning rules."""
