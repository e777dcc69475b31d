"""The ckms lab: throwaway CA environments on the local machine.

``ckms_lab.model`` describes an environment (segments, hosts, allowed flows) as plain data,
``ckms_lab.hosts`` turns one host or segment of it into a real systemd-nspawn machine in its own
network namespace, ``ckms_lab.provider`` exposes that driver to Pulumi as a dynamic provider, and
``ckms_lab.inventory`` renders the stack outputs into an Ansible inventory.
"""
