"""Benchmark harness: a baseline relay, a picows load generator and the orchestrator."""
