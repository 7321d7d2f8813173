"""`pdserve plan`: which hardware, how many chips a pod and which prefill:decode split serve a
model's workload at its targets for the least cost. Pure (no I/O but the command's): model
shapes, the accelerator catalogue, workloads, the replica performance model (also the
planner's priors and the simulator's), queueing, the search, the check of the cheapest
candidates in the discrete-event simulator (sim/), the outputs."""
