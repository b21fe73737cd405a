"""Folder-per-class image classification: the logic behind the Snakemake workflow.

One folder per layer, lowest first: core, data, models, training, evaluation, report (each
folder's __init__ says what it holds). `imageclf STAGE` (cli.py) runs one stage; every rule's
command is one such call, with the rule's inputs, outputs and params as its arguments.
"""
