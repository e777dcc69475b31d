"""ckms_app: the compact CA daemon of ckms, its CLI and the operator client."""

__version__ = "0.1.0"
