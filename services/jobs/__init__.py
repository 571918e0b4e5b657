"""Durable asynchronous jobs: submission, the state machine, and the tracker's runner."""
