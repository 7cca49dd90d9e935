"""notification-service: accept e-mail notifications over HTTP, keep them in a durable outbox,
send them in the background."""
