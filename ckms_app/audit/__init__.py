"""The audit trail above the store: seals, verification and export, real-time alerts."""
