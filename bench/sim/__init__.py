"""Discrete-event simulator of a P/D deployment with the real planner in the loop."""
