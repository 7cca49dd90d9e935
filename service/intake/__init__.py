"""The one way in: what turns a request, a batch item or a CSV row into a notification in the outbox."""
