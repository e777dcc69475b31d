"""The CA daemon: supervisor, runtime and thin HTTP routes."""
