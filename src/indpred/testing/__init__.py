"""References for tests and benchmarks only: nothing in training, evaluation or the command uses them."""
