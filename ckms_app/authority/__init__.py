"""The CA itself: the signer (sole user of the CA key), issuance, revocation, CRLs, RBAC, entities, ceremony, guard, self-tests, linter client."""
