"""Simulated device fleets publishing telemetry over MQTT or Kafka, for demos and benchmarks.

`options` says what to simulate, `payloads` what each message carries and `report` what came of
a run; `mqtt` (over `devices`, its connections) and `kafka` run the fleets; `common` holds the
rest that both share.
"""
