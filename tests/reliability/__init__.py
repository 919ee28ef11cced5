"""Fault-injection tests: kills, preemption, damaged checkpoints, bad data, NaN, lost hosts, full
disks. docs/reliability.md tabulates each fault and the test that shows what the program does."""
