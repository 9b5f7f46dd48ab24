"""The experiment harness every chapter shares: precision, checkpoints, the training loop, run records, CLIs."""
