"""Delivery: the dispatcher that claims from the outbox, its process, and the SMTP connection it sends on."""
