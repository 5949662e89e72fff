"""Training: the trainer owns the mesh, sharding, the jitted step, checkpoints and logging."""
