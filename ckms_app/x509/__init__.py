"""Pure X.509 work, no I/O: CSR checks, certificate profiles, certificate assembly, EST encoding."""
