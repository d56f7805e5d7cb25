"""Device updates: signed bundles, the A/B-slot agent, preflight checks and install artifacts."""
