"""The web side: tracking endpoints, subscribe, webhooks and (with the catcher) the outbox."""
