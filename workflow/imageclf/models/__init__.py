"""Layer 3, models: the architectures, building a model with its head, and its pretrained weights."""
