"""The command-line broker: routing, fan-out and store-and-forward mailboxes."""
