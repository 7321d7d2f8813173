"""`make demo` (`python -m e2e.demo`): pdserve's main job, shown end to end on one machine.

Sections: the local cluster and its GPU/TPU/CPU pools; pdserve installed with kubectl and the
operator reconciling the samples onto those pools; the tiny model served through a real
router -> prefill -> decode; and the planner's rebalancing decision as the load moves."""
