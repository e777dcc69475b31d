"""The CKMS environment component and its backends (lab, onprem, aws)."""
