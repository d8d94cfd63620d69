"""Training machinery: the loop, optimisers and schedules, EMA, checkpoints, distributed helpers."""
