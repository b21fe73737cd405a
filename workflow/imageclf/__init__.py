"""Folder-per-class image classification: the logic behind the Snakemake workflow.

Each module does one thing (index, presets, models, train, select, predict, ...) and the
workflow's rule scripts only turn a rule's inputs, outputs and params into calls of them.
"""
