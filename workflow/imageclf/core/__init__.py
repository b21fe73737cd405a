"""Layer 1, core: what every stage shares and nothing above it: errors, file writing, logs, the
CSV/JSON formats stages hand on (tables), the configuration and a run's identity. No torch."""
