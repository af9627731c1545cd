"""v2v: restyle videos in bulk with a video-to-video diffusion model on Ray.

Importing this package starts nothing and downloads nothing. A clip flows through the packages in this order:

    core      manifest -> plan -> video (decode) ... video (encode) -> index; storage and the lease beside them
    model     loading, the embedded tiny model, the sampler (plain tensor functions)
    speed     the optional speed layer, applied once after the model loads (v2v.speed.apply_speed_settings)
    job       resources, the stages, the Ray Data pipeline (the only Ray code), metrics, what a run reports

`config` is the one typed config. Entry points are in jobs/.
"""

__version__ = "0.1.0"
