"""Layer 6, report: the ablation table and its statistics, and the plots."""
