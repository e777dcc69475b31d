"""Hardening: the control catalog, the host checks and the per-item report."""
