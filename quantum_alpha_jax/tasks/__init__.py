"""Tasks: what each model learns (inputs from a batch, loss, metrics), for the shared trainer."""
