"""Layer 2, data: images as a person sees them, the index of a data set, its digests, folds,
the decoded-image cache and the loaders that feed training and prediction."""
