"""Simulated device fleets publishing telemetry over MQTT or Kafka, for demos and benchmarks."""
