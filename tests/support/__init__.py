"""Test helpers: real servers (Redis Cluster, Sentinel) and reference computations."""
