"""The model: loading a diffusers folder (or the embedded tiny model) and the batched sampler."""
