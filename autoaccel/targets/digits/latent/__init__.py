"""Two latent-diffusion models on scikit-learn's digits, trained by autoaccel and shipped inside the package.

A small ``AutoencoderKL`` maps 16x16 digits to 4x4x4 latents; on those latents a text-to-image
``StableDiffusionPipeline`` (a tiny CLIP text encoder and a cross-attention UNet) and a class-conditional
``DiTPipeline`` are trained, so that autoaccel's searches can be tried on the pipeline kinds real users bring.
Retrain all three with ``python -m autoaccel train-latent-models`` (see ``train.py``).
"""
