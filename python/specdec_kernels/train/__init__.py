"""Training of draft models on data the target generates."""
