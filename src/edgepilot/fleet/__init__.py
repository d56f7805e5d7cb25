"""Fleets: an inventory over MQTT, a TUF update repository, canary rollouts and a light agent mode."""
