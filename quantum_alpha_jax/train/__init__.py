"""The shared trainer: state, one data-parallel train/eval step, Orbax checkpoints, writers, loop."""
