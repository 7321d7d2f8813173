"""Tensor parallelism: one model replica over several devices, one process each (rank 0 runs
the engine; the others follow its steps), heads and MLP columns sharded, one all-reduce per
attention and MLP output."""
