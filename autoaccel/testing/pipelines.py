"""Tiny seeded random-weight diffusers pipeline folders of every supported class, built offline (no download) for
autoaccel's tests and for extensions that test themselves against the same pipelines.

Each folder is written with `save_pretrained` and loads back with `DiffusionPipeline.from_pretrained`, so the tests
take the same loading path as a real model folder. Tokenizers are built in code from a byte/character vocabulary
(no merges), so every ASCII prompt tokenizes without unknown tokens and different prompts give different ids.
Component layouts follow the real models (latent channels, patch sizes, VAE scaling/shift factors, scheduler
types) with hidden sizes of 16-32 and 1-2 layers, so one 4-step call at batch 4 takes a fraction of a second.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY_KINDS = (
    "ddpm",
    "ddim",
    "dit",
    "sd",
    "pixart_alpha",
    "pixart_sigma",
    "sd3",
    "sdxl",
    "flux",
    "flux_schnell",
    "sana",
)
# the text-to-image classes autoaccel loads
PROMPT_KINDS = ("sd", "pixart_alpha", "pixart_sigma", "sd3", "sdxl", "flux", "flux_schnell", "sana")

# Pixel size of the images every latent pipeline here but Sana's makes: a 2-level VAE (scale factor 2) over 8x8
# latents.
IMAGE_SIZE = 16
LATENT_SIZE = 8
SANA_IMAGE_SIZE = 32  # SanaPipeline takes only sides divisible by 32: its 8x8 latents under a scale-4 autoencoder
CLIP_MAX_LENGTH = 77


def build_tiny_pipeline(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline of `kind` (one of TINY_KINDS) to `folder` with `save_pretrained`; returns `folder`."""
    builders = {
        "ddpm": _ddpm,
        "ddim": _ddim,
        "dit": _dit,
        "sd": _stable_diffusion,
        "pixart_alpha": _pixart_alpha,
        "pixart_sigma": _pixart_sigma,
        "sd3": _stable_diffusion_3,
        "sdxl": _stable_diffusion_xl,
        "flux": _flux,
        "flux_schnell": _flux_schnell,
        "sana": _sana,
    }
    if kind not in builders:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; choose one of {', '.join(TINY_KINDS)}")
    folder = Path(folder)
    builders[kind](seed).save_pretrained(folder)
    # every tiny folder says its weights are random: what reports and benchmarks on it show is plumbing only
    (folder / "autoaccel.json").write_text(json.dumps({"random_weights": True, **AUTOACCEL_JSON.get(kind, {})}))
    return folder


# What a Flux folder's autoaccel.json says: FluxPipeline makes 128 x VAE-scale pixels unless told a size (here 16),
# and a timestep-distilled Flux (FLUX.1-schnell) is run at 4 steps rather than its pipeline's 28.
AUTOACCEL_JSON = {
    "flux": {"default_call": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}},
    "flux_schnell": {"default_call": {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "num_inference_steps": 4}},
}


def build_tiny_pipeline_folder(
    folder: Path, num_train_timesteps: int = 100, seed: int = 0, class_conditional: bool = True
) -> Path:
    """A tiny class-conditional DDPM pipeline (1x8x8 pixels, 3 classes and a null class in ``autoaccel.json``,
    as the embedded digits model declares them) saved to ``folder``; ``class_conditional=False`` drops the labels."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=4 if class_conditional else None,
    )
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, timestep_spacing="leading", clip_sample=True)
    folder = Path(folder)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    if class_conditional:
        (folder / "autoaccel.json").write_text(json.dumps({"num_classes": 3, "null_class": 3}))
    return folder


# Tokenizers and text encoders ------------------------------------------------------------------------------------


def _clip_tokenizer():
    """A byte-level CLIP BPE tokenizer without merges: every byte is a token, word-final bytes carry `</w>`."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    pieces = ["<|startoftext|>", "<|endoftext|>", *byte_chars, *(char + "</w>" for char in byte_chars)]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def _clip_config(hidden_size: int, projection_dim: int | None = None, heads: int = 2, intermediate_size: int = 0):
    """Two CLIP text layers of ``hidden_size`` (the tests' widths, or a real encoder's width for a benchmark)."""
    from transformers import CLIPTextConfig

    tokenizer = _clip_tokenizer()
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        projection_dim=projection_dim or hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_tokenizer():
    """A T5 Unigram tokenizer over single printable ASCII characters (no sentinel ids)."""
    from transformers import T5Tokenizer

    characters = [char for char in string.printable if not char.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(char, -3.0) for char in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _t5_encoder(seed: int, d_model: int = 32, d_kv: int = 8, d_ff: int = 0):
    """Two T5 encoder layers of ``d_model`` in heads of ``d_kv`` (a benchmark passes T5-XXL's widths)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(_t5_tokenizer()),
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff or 2 * d_model,
        num_layers=2,
        num_heads=d_model // d_kv,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _vae(seed: int, latent_channels: int, scaling_factor: float, shift_factor: float | None, quant_conv: bool):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    ).eval()


def _sd_vae(seed: int):
    """The 4-channel KL VAE layout of SD 1.x, PixArt and DiT (scaling 0.18215, no shift)."""
    return _vae(seed, latent_channels=4, scaling_factor=0.18215, shift_factor=None, quant_conv=True)


def _gemma_tokenizer():
    """A Gemma BPE tokenizer without merges over printable ASCII characters, with Gemma's byte fallback (any other
    character becomes its UTF-8 bytes) and its ``<bos>`` first, as Sana's Gemma-2 tokenizer encodes."""
    from transformers import GemmaTokenizer

    characters = [char for char in string.printable if not char.isspace()] + ["\u2581", "\n"]
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", *(f"<0x{byte:02X}>" for byte in range(256)), *characters]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True)


def _gemma2_encoder(seed: int, hidden_size: int = 32):
    """A 2-layer Gemma-2 decoder (its hidden states are Sana's text features); positions cover Sana's complex human
    instruction (about 1,100 characters here) plus its 300 prompt tokens."""
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=len(_gemma_tokenizer()),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    return Gemma2Model(config).eval()


def _dc_vae(seed: int, latent_channels: int = 32):
    """A 3-level deep-compression autoencoder (scale factor 4: 8x8 latents make SANA_IMAGE_SIZE images) with
    Sana's 32 latent channels and scaling factor."""
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    return AutoencoderDC(
        in_channels=3,
        latent_channels=latent_channels,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 32),
        decoder_block_out_channels=(8, 16, 32),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)),
        decoder_qkv_multiscales=((), (), (5,)),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        scaling_factor=0.41407,
    ).eval()


# Pixel-space pipelines -------------------------------------------------------------------------------------------


def _pixel_unet(seed: int):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    ).eval()


def _ddpm(seed: int):
    from diffusers import DDPMPipeline, DDPMScheduler

    return DDPMPipeline(unet=_pixel_unet(seed), scheduler=DDPMScheduler(num_train_timesteps=1000))


def _ddim(seed: int):
    from diffusers import DDIMPipeline, DDIMScheduler

    return DDIMPipeline(unet=_pixel_unet(seed), scheduler=DDIMScheduler(num_train_timesteps=1000))


# Latent pipelines ------------------------------------------------------------------------------------------------


def _dit(seed: int):
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    # DiTPipeline passes class id 1000 as the null class, so the label table needs 1000 classes plus the null row.
    transformer = DiTTransformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        activation_fn="gelu-approximate",
        attention_bias=True,
    ).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    return DiTPipeline(transformer=transformer, vae=_sd_vae(seed), scheduler=scheduler)


def _stable_diffusion(seed: int):
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(hidden_size=32)).eval()
    # The SD 1.x scheduler: PLMS with the scaled-linear betas of the released checkpoints.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_sd_vae(seed),
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _pixart_transformer(seed: int):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    # sample_size is not one of PixArt's binned sizes (32/64/128/256): calls must pass use_resolution_binning=False.
    return PixArtTransformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    ).eval()


def _pixart_parts(seed: int) -> dict:
    from diffusers import DPMSolverMultistepScheduler

    return {
        "transformer": _pixart_transformer(seed),
        "vae": _sd_vae(seed),
        "text_encoder": _t5_encoder(seed),
        "tokenizer": _t5_tokenizer(),
        "scheduler": DPMSolverMultistepScheduler(num_train_timesteps=1000),
    }


def _pixart_alpha(seed: int):
    from diffusers import PixArtAlphaPipeline

    return PixArtAlphaPipeline(**_pixart_parts(seed))


def _pixart_sigma(seed: int):
    from diffusers import PixArtSigmaPipeline

    return PixArtSigmaPipeline(**_pixart_parts(seed))


def _stable_diffusion_3(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    # Two CLIP encoders of width 16 concatenate to 32 = the T5 width = joint_attention_dim, as 768+1280 <= 4096 do.
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        caption_projection_dim=16,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        pos_embed_max_size=16,
    ).eval()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_clip_config(hidden_size=16)).eval()
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(hidden_size=16)).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(seed, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False),
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(seed + 2),
        tokenizer_3=_t5_tokenizer(),
    )


def tiny_sdxl_unet(seed: int = 0):
    """SDXL's UNet layout at a tiny width: text-time added conditioning (the second encoder's pooled projection
    and six size ids), linear projections, more transformer layers at the deeper level."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
        norm_num_groups=8,
    ).eval()


def _stable_diffusion_xl(seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # SDXL's layout: two CLIP encoders whose hidden states concatenate (16 + 16 = the cross-attention width), the
    # second's pooled projection and six size ids (original size, crop, target size) as added conditioning.
    unet = tiny_sdxl_unet(seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(hidden_size=16)).eval()
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(hidden_size=16)).eval()
    # SDXL base's scheduler: Euler on the scaled-linear betas, leading spacing with offset 1
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=_vae(seed, latent_channels=4, scaling_factor=0.13025, shift_factor=None, quant_conv=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def _flux(seed: int, guidance_embeds: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    # FLUX.1-dev layout: 16 latent channels packed 2x2 into 64 token channels, guidance embedding on.
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_clip_config(hidden_size=32)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    if not guidance_embeds:  # FLUX.1-schnell's scheduler: no shift at all
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=_vae(seed, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False),
        text_encoder=text_encoder,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=_t5_encoder(seed + 1),
        tokenizer_2=_t5_tokenizer(),
    )


def _flux_schnell(seed: int):
    """FLUX.1-schnell's layout: timestep-distilled, no guidance input, run at 4 steps (its ``autoaccel.json``)."""
    return _flux(seed, guidance_embeds=False)


def _sana(seed: int):
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    # Sana 1.0 layout: linear self-attention, cross-attention on Gemma-2 features, GLUMBConv feed-forwards
    # (mlp_ratio 2.5), patch size 1 over 32 latent channels; sample_size 8 is not one of Sana's binned sizes
    # (16/32/64/128), so pipeline calls pass use_resolution_binning=False.
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        in_channels=32,
        out_channels=32,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
        mlp_ratio=2.5,
        sample_size=LATENT_SIZE,
        patch_size=1,
    ).eval()
    # The scheduler Sana's 1024 px checkpoints ship: DPM-Solver++ on flow-matching sigmas shifted by 3.
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
    )
    return SanaPipeline(
        tokenizer=_gemma_tokenizer(),
        text_encoder=_gemma2_encoder(seed),
        vae=_dc_vae(seed),
        transformer=transformer,
        scheduler=scheduler,
    )


def plan_images(pipeline, target, count: int = 6, seed: int = 5):
    """``count`` images of ``pipeline`` (a plan applied to ``target``) on fixed seeds: what a test compares
    between a plan as trained and as re-applied from its artifact or recipe."""
    from autoaccel.pipeline.seeds import make_seed_batch, sample_in_chunks

    seeds = make_seed_batch(target.sample_shape, count, seed, target.condition_count)
    return sample_in_chunks(pipeline, seeds, count)
