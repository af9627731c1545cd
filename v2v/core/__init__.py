"""The core: manifests, clip plans, video I/O, the index, storage and the lease. It knows neither Ray nor torch."""
