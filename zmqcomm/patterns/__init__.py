"""Messaging patterns built on the secure transport."""
