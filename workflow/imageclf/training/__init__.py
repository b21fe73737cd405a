"""Layer 4, training: the augmentation chains, the train loop and its step, checkpoints kept while
training, and the full fit's plan."""
