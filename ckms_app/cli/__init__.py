"""The ``ckms`` command line: CA, operator (terminal), admin, HSM and audit subcommands."""
