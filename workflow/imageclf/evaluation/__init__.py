"""Layer 5, evaluation: checkpoint selection, predictions, ensembles, cross-validation's
out-of-fold predictions and the submission."""
