"""evohpo: a genetic algorithm for neural-network hyperparameters, compared with grid and random search."""
