"""Bring your own key: the AES-256-GCM vault and the key store."""
