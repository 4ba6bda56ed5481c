"""Training: dataset preparation, the prepared-shard dataset, the recipe, the
Accelerate training loop, its resumable state, and its monitor."""
