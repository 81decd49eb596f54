"""Tiny random models built from configs, for tests, benchmarks and notebooks.

Their numbers mean nothing about real models; they exercise the real loading, hooking and
training code paths (diffusers/transformers folder layouts included) in seconds on a CPU.
Tokenizers are real: CLIP's BPE vocabulary rebuilt from the file open_clip_torch ships, and
the WordPiece vocabulary of the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from geomkit.errors import GeomkitError

CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _open_clip_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the file without importing torchvision
    if spec is None or not spec.submodule_search_locations:
        raise GeomkitError("the CLIP vocabulary comes from open_clip_torch: pip install --no-deps open_clip_torch")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer(dest: Path) -> Path:
    """Write the Hugging Face CLIPTokenizer files (vocab.json, merges.txt) rebuilt exactly from
    open_clip's BPE file: 49,408 tokens, 48,894 merges."""
    from transformers import CLIPTokenizer

    lines = gzip.open(_open_clip_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(str(dest / "vocab.json"), str(dest / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>")
    tok.save_pretrained(dest)
    return dest


def minilm_tokenizer():
    from transformers import AutoTokenizer

    from geomkit.sources.packaged import minilm_l6_dir

    return AutoTokenizer.from_pretrained(minilm_l6_dir())


# The special-token ids the released SD 1.x/2.x and SDXL text-encoder configs carry (0, 1, 2, not the
# tokenizer's 49406/49407). With `eos_token_id: 2` transformers' CLIP pools at the argmax of the
# ids, which is an added token's id once one is added: tiny models must carry the same values, or
# they hide where the pooled embedding is taken. `eos_token_id=49407` builds the newer style
# (pooling at the first EOS) for tests that cover both.
RELEASED_CLIP_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
EOS_STYLE_IDS = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def clip_text_config(hidden=32, layers=2, heads=4, projection_dim=32, eos_token_id=2, **kw):
    from transformers import CLIPTextConfig

    ids = RELEASED_CLIP_IDS if eos_token_id == 2 else EOS_STYLE_IDS
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act="gelu",
        **ids,
        **kw,
    )


def _seeded(seed):
    import torch

    torch.manual_seed(seed)


def save_clip_text_model(dest: Path, seed: int = 0, **kw) -> Path:
    from transformers import CLIPTextModel

    _seeded(seed)
    CLIPTextModel(clip_text_config(**kw)).save_pretrained(dest)
    write_clip_tokenizer(dest)
    return Path(dest)


def save_gemma3_model(dest: Path, seed: int = 0, hidden=32, layers=2) -> Path:
    """A tiny Gemma 3 causal LM with the MiniLM WordPiece tokenizer (the family is decided by the
    model's config; any tokenizer whose ids fit the table exercises the same code)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = minilm_tokenizer()
    _seeded(seed)
    cfg = Gemma3TextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=len(tok),
        max_position_embeddings=128,
        sliding_window=16,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    Gemma3ForCausalLM(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return Path(dest)


def save_bert_model(dest: Path, seed: int = 0, hidden=32, layers=2) -> Path:
    from transformers import BertConfig, BertModel

    tok = minilm_tokenizer()
    _seeded(seed)
    cfg = BertConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4, vocab_size=len(tok)
    )
    BertModel(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return Path(dest)


def save_sd_pipeline(dest: Path, sdxl: bool = False, seed: int = 0, eos_token_id: int = 2) -> Path:
    """A tiny Stable Diffusion (1.x/2.x layout) or SDXL pipeline folder, as diffusers saves it,
    with the released configs' special ids (`eos_token_id` 2; 49407 for the newer style) and, for
    SDXL, the released second tokenizer's padding with "!" (id 0)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    dest = Path(dest)
    tok_dir = write_clip_tokenizer(dest / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    _seeded(seed)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(clip_text_config(hidden=32, eos_token_id=eos_token_id))
    if not sdxl:
        from diffusers import StableDiffusionPipeline

        unet = UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=2,
        )
        pipe = StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        from diffusers import StableDiffusionXLPipeline

        text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(hidden=48, projection_dim=32, eos_token_id=eos_token_id))
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, pad_token="!")
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=32 + 48,
            norm_num_groups=2,
        )
        pipe = StableDiffusionXLPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, scheduler=scheduler,
        )
    pipe.save_pretrained(dest)
    import shutil

    shutil.rmtree(tok_dir)
    del torch
    return dest


@lru_cache(maxsize=None)
def cached_dir(kind: str, root: str) -> Path:
    """Build each tiny model once per process under `root` (tests share them)."""
    dest = Path(root) / kind
    if (dest / "config.json").exists() or (dest / "model_index.json").exists():
        return dest
    builders = {
        "clip": save_clip_text_model,
        "gemma3": save_gemma3_model,
        "bert": save_bert_model,
        "sd": lambda d: save_sd_pipeline(d, sdxl=False),
        "sdxl": lambda d: save_sd_pipeline(d, sdxl=True),
        "sd-eos49407": lambda d: save_sd_pipeline(d, sdxl=False, eos_token_id=49407),
        "sdxl-eos49407": lambda d: save_sd_pipeline(d, sdxl=True, eos_token_id=49407),
        "sana": save_sana_pipeline,
        "t5": save_t5_model,
        "umt5": lambda d: save_t5_model(d, umt5=True),
        "flux": save_flux_pipeline,
        "flux-schnell": lambda d: save_flux_pipeline(d, guidance=False),
        "sd3": save_sd3_pipeline,
    }
    return builders[kind](dest)


# ---- tiny scoring models (evaluation: DINOv2 image features, SigLIP / CLIP image-text) ----------
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def save_dinov2_model(dest: Path, seed: int = 0, image_size: int = 32, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny random `Dinov2Model` with DINOv2's image processor (resize shortest edge, centre crop,
    ImageNet normalisation), scaled down to `image_size` pixels."""
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    _seeded(seed)
    cfg = Dinov2Config(
        image_size=image_size, patch_size=8, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        mlp_ratio=2,
    )
    Dinov2Model(cfg).save_pretrained(dest)
    BitImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_center_crop=True,
    ).save_pretrained(dest)
    return Path(dest)


def save_siglip_model(dest: Path, seed: int = 0, image_size: int = 32, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny random `SiglipModel` (text tower of 64 positions, as SigLIP's checkpoints) with
    SigLIP's image processor (plain resize, mean/std 0.5). Its tokenizer is CLIP's BPE (rebuilt
    from open_clip's file): real SigLIP folders bring their own SentencePiece tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    _seeded(seed)
    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, max_position_embeddings=64)
    vision = dict(image_size=image_size, patch_size=8, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(dest)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(dest)
    write_clip_tokenizer(dest)
    return Path(dest)


def save_clip_model(dest: Path, seed: int = 0, image_size: int = 32, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny random two-tower `CLIPModel` (text + vision) with CLIP's image processor and tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    _seeded(seed)
    text = clip_text_config(hidden=hidden, layers=layers).to_dict()
    vision = dict(image_size=image_size, patch_size=8, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)).save_pretrained(dest)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(dest)
    write_clip_tokenizer(dest)
    return Path(dest)


@lru_cache(maxsize=None)
def cached_scorer_dir(kind: str, root: str) -> Path:
    """Build each tiny scoring model ("dinov2" | "siglip" | "clipmodel") once per process under `root`."""
    dest = Path(root) / kind
    if (dest / "config.json").exists():
        return dest
    builders = {"dinov2": save_dinov2_model, "siglip": save_siglip_model, "clipmodel": save_clip_model}
    return builders[kind](dest)


def save_sd_pipeline_wide(dest: Path, text_hidden: int = 768, seed: int = 0) -> Path:
    """A tiny SD 1.x pipeline whose text encoder has SD 1.5's real width (768) and vocabulary
    (49,408 rows, 38M parameters), with one block and a tiny UNet/VAE: for measuring what a
    trainer spends on the embedding table itself (gradients, optimiser state, restores)."""
    import shutil

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    dest = Path(dest)
    tok_dir = write_clip_tokenizer(dest / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    _seeded(seed)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4, norm_num_groups=2, sample_size=32,
    )
    text_encoder = CLIPTextModel(clip_text_config(hidden=text_hidden, layers=1, heads=12 if text_hidden % 12 == 0 else 4))
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_hidden, attention_head_dim=2, norm_num_groups=2,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(dest)
    shutil.rmtree(tok_dir)
    return dest


def save_sana_pipeline(dest: Path, seed: int = 0) -> Path:
    """A tiny SANA pipeline folder (Gemma 2 text encoder, SANA DiT, DC-AE, flow-matching scheduler),
    as diffusers saves it; the tokenizer is MiniLM's WordPiece (any tokenizer whose ids fit works)."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tok = minilm_tokenizer()
    _seeded(seed)
    text_encoder = Gemma2Model(Gemma2Config(
        head_dim=8, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, attn_implementation="eager",
    ))
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=16,
        sample_size=16,
    )
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = SanaPipeline(tokenizer=tok, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(dest)
    return Path(dest)


# ---- full-size pipelines with random weights (benchmarks) --------------------------------------
# The public configs of SD 1.5 and SDXL base (UNet, CLIP text encoders, VAE): speed and memory do
# not depend on the weights' values, so a random pipeline of the right size measures what a
# user's run costs. Building `sdxl` needs about 10 GB of memory (the UNet is built on the GPU
# when one is present and saved in float16; encoders and VAE in float32).
_SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
_SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
_CLIP_L = dict(hidden=768, layers=12, heads=12, projection_dim=768, intermediate_size=3072, hidden_act="quick_gelu")
_CLIP_G = dict(hidden=1280, layers=32, heads=20, projection_dim=1280, intermediate_size=5120, hidden_act="gelu")
_VAE = dict(
    block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
PIPELINE_SIZES = {
    # size: (sdxl?, unet config, encoder configs, vae extra, default resolution)
    "sd15": (False, _SD15_UNET, [_CLIP_L], dict(sample_size=512, scaling_factor=0.18215), 512),
    "sdxl": (True, _SDXL_UNET, [_CLIP_L, _CLIP_G], dict(sample_size=1024, scaling_factor=0.13025, force_upcast=True), 1024),
}


def save_sized_pipeline(dest: Path, size: str, seed: int = 0) -> Path:
    """An SD 1.5-sized (`sd15`) or SDXL-base-sized (`sdxl`) pipeline folder with random weights,
    as diffusers saves it; `tiny` is the tiny SDXL pipeline of the tests."""
    import shutil

    import torch

    if size == "tiny":
        return save_sd_pipeline(dest, sdxl=True, seed=seed)
    if size not in PIPELINE_SIZES:
        raise GeomkitError(f"--size {size}: choose tiny, {', '.join(PIPELINE_SIZES)}")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sdxl, unet_cfg, enc_cfgs, vae_extra, _ = PIPELINE_SIZES[size]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _seeded(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
    unet.to(torch.float16).save_pretrained(dest / "unet")
    del unet
    names = ["text_encoder", "text_encoder_2"]
    for k, enc_cfg in enumerate(enc_cfgs):
        cfg = clip_text_config(hidden=enc_cfg["hidden"], layers=enc_cfg["layers"], heads=enc_cfg["heads"],
                               projection_dim=enc_cfg["projection_dim"])
        cfg.intermediate_size, cfg.hidden_act = enc_cfg["intermediate_size"], enc_cfg["hidden_act"]
        with torch.device(device):
            model = (CLIPTextModelWithProjection if k == 1 else CLIPTextModel)(cfg)
        model.save_pretrained(dest / names[k])
        write_clip_tokenizer(dest / ("tokenizer" if k == 0 else "tokenizer_2"))
        del model
    with torch.device(device):
        AutoencoderKL(**_VAE, **vae_extra).save_pretrained(dest / "vae")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  steps_offset=1, clip_sample=False).save_pretrained(dest / "scheduler")
    index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
             "_diffusers_version": "0.30.0", "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"], tokenizer_2=["transformers", "CLIPTokenizer"],
                     force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
    shutil.rmtree(dest / "_tok", ignore_errors=True)
    return dest


# ---- T5 encoders, FLUX.1 and SD3.x (tiny random pipelines; tokenizers trained locally) -----------
T5_VOCAB_SIZE = 1000


def _t5_corpus() -> list:
    """Training text for the tiny T5 tokenizer: the whole words of CLIP's BPE vocabulary (the
    first merges are the most frequent English words) plus geomkit's own template prompts, so the
    usual init words (dog, cat, photo, ...) come out as single tokens."""
    from geomkit.train.data import OBJECT_TEMPLATES

    lines = gzip.open(_open_clip_bpe()).read().decode("utf-8").split("\n")[1:20000]
    words = [m.replace(" ", "")[:-4] for m in lines if m.endswith("</w>") and m.replace(" ", "")[:-4].isalpha()]
    common = ["dog", "cat", "car", "house", "toy", "person", "man", "woman", "sculpture", "painting", "style", "apple",
              "study", "writing", "object", "fruit", "teddy", "bear", "tree", "flower"]
    prompts = [t.format(w) for t in OBJECT_TEMPLATES for w in common]
    return prompts * 3 + [" ".join(words[i: i + 12]) for i in range(0, len(words), 12)]


def t5_tokenizer(vocab_size: int = T5_VOCAB_SIZE):
    """A T5TokenizerFast around a Unigram model trained here in about a second (no download):
    T5's special tokens (<pad> 0, </s> 1, <unk> 2), its Metaspace pre-tokenizer and its
    "append </s>" post-processor; no <extra_id_N> sentinels (they only matter for T5's pre-training)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      shrinking_factor=0.75)
    tk.train_from_iterator(_t5_corpus(), trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", tk.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                           model_max_length=512)


def t5_config(vocab_size: int, d_model: int = 64, layers: int = 2, heads: int = 4, umt5: bool = False, **kw):
    """A tiny T5 v1.1-style encoder config (gated GELU, as T5-XXL in FLUX/SD3): pre-norm RMSNorm,
    relative position buckets, no absolute positions. `umt5` builds UMT5 (Wan2.1's encoder:
    per-block relative position biases)."""
    from transformers import T5Config, UMT5Config

    cls = UMT5Config if umt5 else T5Config
    return cls(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model, num_layers=layers,
               num_heads=heads, relative_attention_num_buckets=8, relative_attention_max_distance=32,
               feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0, tie_word_embeddings=False, **kw)


def save_t5_model(dest: Path, seed: int = 0, d_model: int = 64, layers: int = 2, umt5: bool = False) -> Path:
    """A tiny T5 (or umT5) encoder folder with the locally trained tokenizer."""
    from transformers import T5EncoderModel, UMT5EncoderModel

    tok = t5_tokenizer()
    _seeded(seed)
    (UMT5EncoderModel if umt5 else T5EncoderModel)(t5_config(len(tok), d_model, layers, umt5=umt5)).save_pretrained(dest)
    tok.save_pretrained(dest)
    return Path(dest)


def _flow_vae(latent_channels: int = 4, scaling_factor: float = 1.5035, shift_factor: float = 0.0609):
    """A tiny AutoencoderKL as FLUX/SD3 use it (no quant convs; latents (x - shift) * scale)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        norm_num_groups=2, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=scaling_factor, shift_factor=shift_factor,
    )


def save_flux_pipeline(dest: Path, seed: int = 0, guidance: bool = True) -> Path:
    """A tiny FLUX.1 pipeline folder (CLIP-L pooled + T5 sequence, FluxTransformer2DModel, 16-channel
    style VAE scaled down to 4 latent channels, flow-matching scheduler with dynamic shifting), as
    diffusers saves it. `guidance` builds a guidance-distilled transformer (FLUX.1-dev style);
    False builds one without the guidance embedding (FLUX.1-schnell style)."""
    import shutil

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel

    dest = Path(dest)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(dest / "_tok"))
    tokenizer_2 = t5_tokenizer()
    _seeded(seed)
    text_encoder = CLIPTextModel(clip_text_config(hidden=32))
    text_encoder_2 = T5EncoderModel(t5_config(len(tokenizer_2), d_model=64))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=[4, 4, 8],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxPipeline(scheduler=scheduler, vae=_flow_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(dest)
    shutil.rmtree(dest / "_tok")
    return dest


def save_sd3_pipeline(dest: Path, seed: int = 0) -> Path:
    """A tiny SD3.x pipeline folder (CLIP-L and CLIP-G with projections, T5, SD3Transformer2DModel,
    VAE, flow-matching scheduler), as diffusers saves it. The T5 is wider (96) than the two CLIP
    widths together (32 + 48), as in the real model (4096 >= 768 + 1280): SD3 pads the CLIP
    sequence up to T5's width."""
    import shutil

    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    dest = Path(dest)
    tok_dir = write_clip_tokenizer(dest / "_tok")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, pad_token="!")
    tokenizer_3 = t5_tokenizer()
    _seeded(seed)
    text_encoder = CLIPTextModelWithProjection(clip_text_config(hidden=32, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(hidden=48, projection_dim=32))
    text_encoder_3 = T5EncoderModel(t5_config(len(tokenizer_3), d_model=96))
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=96, pooled_projection_dim=64,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        scheduler=scheduler, vae=_flow_vae(scaling_factor=1.5305, shift_factor=0.0609), text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3, transformer=transformer,
    )
    pipe.save_pretrained(dest)
    shutil.rmtree(dest / "_tok")
    return dest
