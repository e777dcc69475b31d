"""The CRL's way from the CA to the IoT hub (toy model, A.37/A.46).

The CA talks only to the certificate-management terminal. The terminal's ``crl_relay`` fetches each new
CRL from the CA, checks it and carries it to the hub; the hub's ``gateway`` is the TLS endpoint devices
connect to with their certificates, and it refuses a device whose certificate the newest CRL lists.
Both sides check every CRL with :mod:`ckms_app.hub.crl_check`, so neither trusts the transport.
"""
