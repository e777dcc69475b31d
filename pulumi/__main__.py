"""Pulumi program: one CKMS environment, built by the backend the stack's ``ckms:kind`` names.

Stack outputs (``flows``, ``hosts``, ``segments``) are what ``ckms_lab.inventory`` renders into
``inventories/<stack>/`` and what the router, host-firewall and IDS roles consume.
"""

from ckms_env import program

program.run()
