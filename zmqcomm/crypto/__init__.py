"""Identities, key files, the Noise handshake, sessions and the audit trail."""
