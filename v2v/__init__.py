"""v2v: restyle videos in bulk with a video-to-video diffusion model on Ray.

Importing this package starts nothing and downloads nothing. A clip flows through the modules in this order:
manifest -> plan -> video (decode) -> sampler (restyle) -> video (encode) -> index; `models` loads the
components the sampler runs, `tiny` builds the embedded default model, `pipeline` wraps the stages for Ray.
"""

__version__ = "0.1.0"
