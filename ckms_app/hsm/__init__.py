"""The PKCS#11 token: sessions, key attributes, SO administration, 2-of-3 custody (Shamir)."""
