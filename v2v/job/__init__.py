"""The Ray job: what it asks of the cluster (resources), its stages, and the Ray Data pipeline."""
