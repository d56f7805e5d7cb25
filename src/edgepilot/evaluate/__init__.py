"""Measure models: latency, throughput, memory, accuracy and reports."""
