"""Discrete-event simulator of a P/D deployment with the real planner in the loop: the event
loop and router (cluster), worker pods, what Prometheus shows (observer), request traces,
scaling policies and per-run reports. Standard library, the autoscaler and the replica
performance model only: `pdserve plan` validates its candidates with it, bench/ studies the
planner with it."""
