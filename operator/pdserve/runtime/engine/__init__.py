"""The engine: requests -> schedule -> run the model -> sample -> postprocess, with the paged KV
cache and its block manager (scheduling and block bookkeeping free of torch)."""
