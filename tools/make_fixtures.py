#!/usr/bin/env python3
"""Generate the committed model-parity fixtures under tests/fixtures/.

Builds tiny random models with HF transformers (Florence-2 native, Llama), saves them with real
tensor names (also re-keyed to Microsoft's original Florence-2 layout and Florence-VL's LLaVA
layout) and stores inputs and expected outputs. Deterministic: fixed seeds, float32, CPU.

Usage (see tools/README.md):
    /root/fvl-py/bin/python tools/make_fixtures.py [--stages f2,f2lang,llama,fvl,phi3,phi3sw,fvlphi,published]
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file, load_file

import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoProcessor,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures")
IMG_DIR = os.path.join(FIX, "images")

IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]

# Florence-2's added tokens, in the order of Microsoft's processing_florence2.py (spec §5.1).
F2_TASK_TOKENS = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + [f"<loc_{i}>" for i in range(1000)]
    + [
        "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
        "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
        "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
    ]
)

# Post-processor config that transformers' conversion script stores in processor_config.json.
BANNED_GROUNDING = [
    "it", "I", "me", "mine", "you", "your", "yours", "he", "him", "his", "she", "her", "hers", "they",
    "them", "their", "theirs", "one", "oneself", "we", "us", "our", "ours", "you", "your", "yours",
    "they", "them", "their", "theirs", "mine", "yours", "his", "hers", "its", "ours", "yours", "theirs",
    "myself", "yourself", "himself", "herself", "itself", "ourselves", "yourselves", "themselves",
    "this", "that", "these", "those", "who", "whom", "whose", "which", "what", "who", "whom", "whose",
    "which", "that", "all", "another", "any", "anybody", "anyone", "anything", "each", "everybody",
    "everyone", "everything", "few", "many", "nobody", "none", "one", "several", "some", "somebody",
    "someone", "something", "each other", "one another", "myself", "yourself", "himself", "herself",
    "itself", "ourselves", "yourselves", "themselves", "the image", "image", "images", "the", "a", "an",
    "a group", "other objects", "lots", "a set",
]
POST_PROCESSOR_CONFIG = {
    "ocr": {
        "pattern": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
        "area_threshold": 0.0,
    },
    "phrase_grounding": {"banned_grounding_tokens": BANNED_GROUNDING},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}

# English training text for the tiny byte-level BPE (contains every Florence-2 task prompt).
CORPUS = """What is the text in the image? What is the text in the image, with regions?
What does the image describe? Describe in detail what is shown in the image.
Describe with a paragraph what is shown in the image. Locate the objects with category name in the image.
Locate the objects in the image, with their descriptions. Locate the region proposals in the image.
Locate the phrases in the caption: a red car parked next to a green tree.
Locate the person in the image with mask. What is the polygon mask of region
What is the region? What does the region describe? What text is in the region?
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
The quick brown fox jumps over the lazy dog. A photo of a cat sitting on a wooden table.
Two people are walking along the beach at sunset while a dog runs ahead of them.
There is a sign with large white letters that reads OPEN on the door of the small shop.
A bowl of fruit with apples, oranges and bananas is placed in the middle of the kitchen.
The city skyline at night shows tall buildings with many lights and a bridge over the river.
Hello world! Numbers like 12, 345 and 6789 appear in receipts, tables and street signs.
"""


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def log(*a):
    print(*a, flush=True)


def rel(p):
    return os.path.relpath(p, REPO)


def save_st(path, tensors):
    """Save a dict of tensors as float32 (ints are converted to f32 too unless they are int64 ids)."""
    out = {}
    for k, v in tensors.items():
        v = torch.as_tensor(v)
        if v.dtype.is_floating_point or v.dtype == torch.uint8:
            v = v.to(torch.float32)
        out[k] = v.detach().contiguous()
    save_file(out, path)
    log(f"  wrote {rel(path)}: " + ", ".join(f"{k}{list(v.shape)}" for k, v in out.items()))


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    log(f"  wrote {rel(path)}")


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def perturb_(model, seed):
    """Re-randomise every parameter so no LayerNorm is identity, no bias is zero and activations
    stay O(1) through the tiny networks. Buffers (e.g. visual_temporal_embed) are left as built."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layernorm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name or "shared" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                gain = 2.0 if "language_model" in name else 1.0  # sharper attention, less repetitive text
                p.copy_(gain * torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def make_images():
    os.makedirs(IMG_DIR, exist_ok=True)
    rs = np.random.RandomState(1234)
    # 1) non-square, photo-like smooth colour noise (W=72, H=52), PNG
    low = (rs.rand(5, 7, 3) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((72, 52), Image.BICUBIC)).astype(np.float32)
    smooth += rs.randn(52, 72, 3) * 6.0
    photo = Image.fromarray(np.clip(smooth, 0, 255).round().astype(np.uint8), "RGB")
    photo.save(os.path.join(IMG_DIR, "photo.png"))
    # 2) grayscale (mode L), portrait (W=56, H=64), PNG
    yy, xx = np.mgrid[0:64, 0:56]
    gray = 128 + 90 * np.sin(xx / 6.0) * np.cos(yy / 9.0) + rs.randn(64, 56) * 10
    Image.fromarray(np.clip(gray, 0, 255).round().astype(np.uint8), "L").save(os.path.join(IMG_DIR, "gray.png"))
    # 3) text drawn on a light background (W=90, H=40), JPEG
    t = Image.new("RGB", (90, 40), (235, 230, 220))
    d = ImageDraw.Draw(t)
    d.text((4, 4), "OPEN 24h", fill=(20, 20, 120))
    d.text((4, 20), "Cafe 1234", fill=(120, 10, 10))
    t.save(os.path.join(IMG_DIR, "text.jpg"), quality=90)
    log("  wrote tests/fixtures/images/{photo.png,gray.png,text.jpg}")


IMAGES = ["photo.png", "gray.png", "text.jpg"]


def load_image(name):
    return Image.open(os.path.join(IMG_DIR, name))


def expand2square(pil_img, background_color):
    """Florence-VL llava/mm_utils.py expand2square (spec §2.1)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


# ----------------------------------------------------------------------------------------------
# Florence-2 tokenizer (tiny byte-level BPE with Florence-2's specials)
# ----------------------------------------------------------------------------------------------
def build_bart_like_tokenizer(vocab_size, florence_tokens=True):
    """BART-like byte-level BPE; with `florence_tokens` the 1024 Florence-2 tokens are added after
    `<mask>` (as the HF-native conversions store them), else it is bare BART (as Microsoft's repos)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False, trim_offsets=True)
    assert tok.token_to_id("<s>") == 0 and tok.token_to_id("<pad>") == 1
    assert tok.token_to_id("</s>") == 2 and tok.token_to_id("<unk>") == 3
    # BART's last base-vocab entry is <mask>
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    n_base = tok.get_vocab_size()
    if not florence_tokens:
        return tok, n_base, n_base + len(F2_TASK_TOKENS)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in F2_TASK_TOKENS])
    n_orig = tok.get_vocab_size()
    assert n_orig == n_base + len(F2_TASK_TOKENS)
    assert tok.token_to_id("<loc_0>") == n_base + 4
    return tok, n_base, n_orig


def wrap_tokenizer(tok, with_image_token):
    kw = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    if with_image_token:
        tok = Tokenizer.from_str(tok.to_str())
        tok.add_special_tokens([AddedToken("<image>", normalized=False, special=True)])
        kw["extra_special_tokens"] = {"image_token": "<image>"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


# ----------------------------------------------------------------------------------------------
# Florence-2 models
# ----------------------------------------------------------------------------------------------
F2_MODELS = {
    # name: (image size, vision config, text config, bpe vocab size, seed)
    "a": dict(
        image=64, bpe_vocab=500, seed=11, full_original_embeds=True, dtype="float32",
        vision=dict(
            embed_dim=[16, 24, 32, 48], num_heads=[2, 3, 4, 6], num_groups=[2, 3, 4, 6], depths=[1, 1, 2, 1],
            window_size=3, projection_dim=32, max_position_embeddings=50, max_temporal_embeddings=100,
        ),
        text=dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128),
    ),
    "b": dict(
        image=80, bpe_vocab=700, seed=22, full_original_embeds=False, dtype="float16",
        vision=dict(
            embed_dim=[8, 16, 24, 32], num_heads=[1, 2, 3, 4], num_groups=[2, 2, 3, 4], depths=[2, 1, 1, 1],
            window_size=4, projection_dim=40, max_position_embeddings=12, max_temporal_embeddings=20,
        ),
        text=dict(d_model=40, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=80, decoder_ffn_dim=80, max_position_embeddings=160),
    ),
}


def conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def grid_sizes(image, vc):
    sizes, n = [], image
    for k, s, p in zip([7, 3, 3, 3], [4, 2, 2, 2], [3, 1, 1, 1]):
        n = conv_out(n, k, s, p)
        sizes.append(n)
    return sizes


def build_florence2(name, spec=None):
    spec = spec or F2_MODELS[name]
    torch.manual_seed(spec["seed"])
    tok, n_base, n_orig = build_bart_like_tokenizer(spec["bpe_vocab"])
    image_token_id = n_orig
    vocab_hf = ((n_orig + 1 + 63) // 64) * 64  # as the conversion script: add <image>, pad to 64
    grids = grid_sizes(spec["image"], spec["vision"])
    n_img = grids[-1] ** 2 + 1
    vision = dict(
        spec["vision"], patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2], patch_padding=[3, 1, 1, 1],
        patch_prenorm=[False, True, True, True], mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0,
    )
    text = dict(
        spec["text"], vocab_size=vocab_hf, activation_function="gelu", scale_embedding=False,
        normalize_before=False, add_final_layer_norm=False, bos_token_id=0, pad_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, init_std=0.02, is_encoder_decoder=True,
        tie_word_embeddings=True,
    )
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)
    config.text_config.model_type = "bart"
    model = Florence2ForConditionalGeneration(config).eval().float()
    perturb_(model, spec["seed"] + 1000)
    model.tie_weights()
    # rows beyond the original vocabulary (the <image> token and the pad-to-64 rows) are zero,
    # so logits there are 0 (never picked over the real rows in these fixtures; checked below).
    with torch.no_grad():
        model.model.language_model.shared.weight[n_orig:] = 0.0
    if spec["dtype"] == "float16":
        # stored as f16 (like Microsoft's checkpoints); the reference runs in f32 on the f16 values
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.dtype.is_floating_point:
                    t.copy_(t.half().float())
    # the temporal embedding buffer must be the real sinusoid table
    te = model.model.multi_modal_projector.visual_temporal_embed
    s, c = te.get_sinusoid_embeddings(te.max_seq_len, te.embed_dim)
    assert torch.allclose(te.pos_idx_to_embed[:, 0::2], s, atol=1e-3) and torch.allclose(te.pos_idx_to_embed[:, 1::2], c, atol=1e-3)
    info = dict(n_base=n_base, n_orig=n_orig, vocab_hf=vocab_hf, image_token_id=image_token_id,
                grids=grids, n_img=n_img, image=spec["image"])
    return model, tok, info


def make_processor(tok, image, n_img):
    ip = CLIPImageProcessorPil(
        do_resize=True, size={"height": image, "width": image}, resample=3, do_center_crop=False,
        crop_size={"height": image, "width": image}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=IMAGE_MEAN, image_std=IMAGE_STD, do_convert_rgb=True,
        image_seq_length=n_img,
    )
    hf_tok = wrap_tokenizer(tok, with_image_token=True)
    return Florence2Processor(image_processor=ip, tokenizer=hf_tok, post_processor_config=POST_PROCESSOR_CONFIG)


# HF-native -> Microsoft original names (inverse of transformers' convert_florence2_original_pytorch_to_hf.py)
def hf_to_original_key(k):
    import re
    if k.startswith("model.vision_tower."):
        k2 = k[len("model."):]
        m = re.match(r"vision_tower\.convs\.(\d+)\.conv\.(weight|bias)$", k2)
        if m:
            return f"vision_tower.convs.{m[1]}.proj.{m[2]}"
        m = re.match(r"vision_tower\.convs\.(\d+)\.norm\.(weight|bias)$", k2)
        if m:
            return k2
        m = re.match(r"vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.(.+)$", k2)
        assert m, k
        pre = f"vision_tower.blocks.{m[1]}.{m[2]}.{m[3]}_block."
        attn = "window_attn" if m[3] == "spatial" else "channel_attn"
        rest = m[4]
        table = {
            "conv1.weight": "conv1.fn.dw.weight", "conv1.bias": "conv1.fn.dw.bias",
            "conv2.weight": "conv2.fn.dw.weight", "conv2.bias": "conv2.fn.dw.bias",
            "norm1.weight": f"{attn}.norm.weight", "norm1.bias": f"{attn}.norm.bias",
            f"{attn}.qkv.weight": f"{attn}.fn.qkv.weight", f"{attn}.qkv.bias": f"{attn}.fn.qkv.bias",
            f"{attn}.proj.weight": f"{attn}.fn.proj.weight", f"{attn}.proj.bias": f"{attn}.fn.proj.bias",
            "norm2.weight": "ffn.norm.weight", "norm2.bias": "ffn.norm.bias",
            "ffn.fc1.weight": "ffn.fn.net.fc1.weight", "ffn.fc1.bias": "ffn.fn.net.fc1.bias",
            "ffn.fc2.weight": "ffn.fn.net.fc2.weight", "ffn.fc2.bias": "ffn.fn.net.fc2.bias",
        }
        return pre + table[rest]
    proj = {
        "model.multi_modal_projector.image_projection.weight": "image_projection",
        "model.multi_modal_projector.image_proj_norm.weight": "image_proj_norm.weight",
        "model.multi_modal_projector.image_proj_norm.bias": "image_proj_norm.bias",
        "model.multi_modal_projector.image_position_embed.row_embeddings.weight": "image_pos_embed.row_embeddings.weight",
        "model.multi_modal_projector.image_position_embed.column_embeddings.weight": "image_pos_embed.column_embeddings.weight",
        "model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed": "visual_temporal_embed.pos_idx_to_embed",
    }
    if k in proj:
        return proj[k]
    if k.startswith("model.language_model."):
        return "language_model.model." + k[len("model.language_model."):]
    if k == "lm_head.weight":
        return "language_model.lm_head.weight"
    raise KeyError(k)


def original_state_dict(model, info, full_embeds, final_logits_bias):
    """Return the model's weights re-keyed to Microsoft's remote-code names (spec §8.1)."""
    sd = {k: v.detach().clone().float().contiguous() for k, v in model.state_dict().items()}
    out = {}
    n_orig = info["n_orig"]
    for k, v in sd.items():
        if k in ("lm_head.weight",) or k.endswith("encoder.embed_tokens.weight") or k.endswith("decoder.embed_tokens.weight"):
            continue  # tied copies: written explicitly below
        ok = hf_to_original_key(k)
        if ok == "image_projection":
            v = v.t().contiguous()  # raw [in, out] parameter in the original code
        if ok == "language_model.model.shared.weight":
            v = v[:n_orig].contiguous()
        out[ok] = v
    shared = out["language_model.model.shared.weight"]
    if full_embeds:
        # tied copies as some conversions store them (model b stores only `shared`)
        out["language_model.model.encoder.embed_tokens.weight"] = shared.clone()
        out["language_model.lm_head.weight"] = shared.clone()
    out["language_model.final_logits_bias"] = final_logits_bias.reshape(1, n_orig).float().contiguous()
    return out


def final_logits_bias(name, info):
    g = torch.Generator().manual_seed(F2_MODELS[name]["seed"] + 7)
    b = 0.3 * torch.randn(info["n_orig"], generator=g)
    if F2_MODELS[name]["dtype"] == "float16":
        b = b.half().float()
    return b


def original_config(model, info, dtype_name):
    vc = model.config.vision_config
    tc = model.config.text_config
    return {
        "_name_or_path": "florence2",
        "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_florence2.Florence2Config",
            "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration",
        },
        "bos_token_id": 0, "eos_token_id": 2, "ignore_index": -100, "model_type": "florence2",
        "pad_token_id": 1, "projection_dim": vc.projection_dim,
        "text_config": {
            "vocab_size": info["n_orig"], "activation_dropout": 0.1, "activation_function": "gelu",
            "add_bias_logits": False, "add_final_layer_norm": False, "attention_dropout": 0.1,
            "bos_token_id": 0, "classif_dropout": 0.1, "classifier_dropout": 0.0, "d_model": tc.d_model,
            "decoder_attention_heads": tc.decoder_attention_heads, "decoder_ffn_dim": tc.decoder_ffn_dim,
            "decoder_layerdrop": 0.0, "decoder_layers": tc.decoder_layers, "decoder_start_token_id": 2,
            "dropout": 0.1, "early_stopping": True, "encoder_attention_heads": tc.encoder_attention_heads,
            "encoder_ffn_dim": tc.encoder_ffn_dim, "encoder_layerdrop": 0.0, "encoder_layers": tc.encoder_layers,
            "eos_token_id": 2, "forced_eos_token_id": 2, "forced_bos_token_id": 0, "gradient_checkpointing": False,
            "init_std": 0.02, "is_encoder_decoder": True,
            "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
            "max_position_embeddings": tc.max_position_embeddings, "no_repeat_ngram_size": 3,
            "normalize_before": False, "num_hidden_layers": tc.encoder_layers, "pad_token_id": 1,
            "scale_embedding": False, "num_beams": 3,
        },
        "vision_config": {
            "model_type": "davit", "drop_path_rate": 0.1,
            "patch_size": list(vc.patch_size), "patch_stride": list(vc.patch_stride),
            "patch_padding": list(vc.patch_padding), "patch_prenorm": list(vc.patch_prenorm),
            "enable_checkpoint": False, "dim_embed": list(vc.embed_dim), "num_heads": list(vc.num_heads),
            "num_groups": list(vc.num_groups), "depths": list(vc.depths), "window_size": vc.window_size,
            "projection_dim": vc.projection_dim,
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": vc.max_temporal_embeddings},
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": vc.max_position_embeddings},
            "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
        },
        "vocab_size": info["n_orig"],
        "torch_dtype": dtype_name,
        "transformers_version": "4.41.0.dev0",
        "is_encoder_decoder": True,
    }


def preprocessor_config(image, n_img):
    return {
        "_valid_processor_keys": [],
        "crop_size": {"height": image, "width": image},
        "do_center_crop": False, "do_convert_rgb": None, "do_normalize": True, "do_rescale": True,
        "do_resize": True, "image_mean": IMAGE_MEAN, "image_processor_type": "CLIPImageProcessor",
        "image_seq_length": n_img, "image_std": IMAGE_STD, "processor_class": "Florence2Processor",
        "resample": 3, "rescale_factor": 1 / 255, "size": {"height": image, "width": image},
    }


def f2_dirs(name):
    return os.path.join(FIX, f"florence2-{name}"), os.path.join(FIX, f"florence2-{name}-original")


F2_GENERATION_CONFIG = {
    # Microsoft's text_config generation defaults (spec §5.1/§5.3); HF-native configs drop forced_bos.
    "bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
    "forced_bos_token_id": 0, "forced_eos_token_id": 2, "num_beams": 3, "no_repeat_ngram_size": 3,
    "early_stopping": True,
}


def original_to_hf_state_dict(osd, model, info):
    """Independent inverse used as a round-trip check of the original layout."""
    hf = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" or k.endswith("embed_tokens.weight"):
            continue
        t = osd[hf_to_original_key(k)]
        if k.endswith("image_projection.weight"):
            t = t.t()
        if k.endswith("shared.weight"):
            t = torch.cat([t, torch.zeros(info["vocab_hf"] - info["n_orig"], t.shape[1])], 0)
        assert t.shape == v.shape, (k, t.shape, v.shape)
        hf[k] = t
    return hf


def stage_florence2():
    make_images()
    for img_name in IMAGES:
        stem = os.path.splitext(img_name)[0]
        save_st(os.path.join(IMG_DIR, f"decoded_{stem}.safetensors"),
                {"decoded_u8": torch.from_numpy(np.asarray(load_image(img_name)).copy())})
    for name in F2_MODELS:
        log(f"[florence2-{name}]")
        model, tok, info = build_florence2(name)
        d_hf, d_orig = f2_dirs(name)
        fresh_dir(d_hf)
        fresh_dir(d_orig)
        proc = make_processor(tok, info["image"], info["n_img"])
        model.generation_config.update(**F2_GENERATION_CONFIG)
        dtype = getattr(torch, F2_MODELS[name]["dtype"])
        model.to(dtype).save_pretrained(d_hf, safe_serialization=True)
        model.float()
        proc.save_pretrained(d_hf)
        write_json(os.path.join(d_hf, "preprocessor_config.json"), preprocessor_config(info["image"], info["n_img"]))
        # reload check: the saved directory reproduces the model and processor
        re_model = Florence2ForConditionalGeneration.from_pretrained(d_hf).eval().float()
        re_proc = AutoProcessor.from_pretrained(d_hf)

        # original layout: same weights plus a NON-zero final_logits_bias (HF-native has no such
        # tensor; the original-layout generation reference in stage f2lang uses it)
        osd = original_state_dict(model, info, F2_MODELS[name]["full_original_embeds"], final_logits_bias(name, info))
        osd_f32 = osd
        osd = {k: v.to(dtype) for k, v in osd.items()}
        save_file(osd, os.path.join(d_orig, "model.safetensors"), metadata={"format": "pt"})
        log(f"  wrote {rel(os.path.join(d_orig, 'model.safetensors'))} ({len(osd)} tensors)")
        write_json(os.path.join(d_orig, "config.json"), original_config(model, info, F2_MODELS[name]["dtype"]))
        write_json(os.path.join(d_orig, "preprocessor_config.json"), preprocessor_config(info["image"], info["n_img"]))
        rt_model = Florence2ForConditionalGeneration(model.config).eval().float()
        rt_model.load_state_dict(original_to_hf_state_dict(osd_f32, model, info), strict=False)
        rt_model.tie_weights()

        for img_name in IMAGES:
            stem = os.path.splitext(img_name)[0]
            pil = load_image(img_name)
            rgb = pil.convert("RGB")
            out = proc(text="<CAPTION>", images=pil, return_tensors="pt")
            out2 = re_proc(text="<CAPTION>", images=pil, return_tensors="pt")
            pv = out["pixel_values"].float()
            assert torch.equal(pv, out2["pixel_values"].float()), "AutoProcessor reload differs"
            assert torch.equal(out["input_ids"], out2["input_ids"])
            resized = np.asarray(rgb.resize((info["image"], info["image"]), Image.BICUBIC)).copy()
            manual = (torch.from_numpy(resized).float().permute(2, 0, 1) / 255.0
                      - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]
            err = (manual[None] - pv).abs().max().item()
            assert err < 1e-5, f"processor != PIL bicubic + normalise ({err})"
            with torch.no_grad():
                vt = model.model.vision_tower(pv).last_hidden_state  # [1, C, H, W]
                davit = vt.flatten(2).transpose(1, 2)  # [1, N, C]
                feats = model.get_image_features(pv).pooler_output  # [1, N+1, D]
                assert torch.equal(feats, re_model.get_image_features(pv).pooler_output)
                assert torch.equal(feats, rt_model.get_image_features(pv).pooler_output)
            assert davit.shape == (1, info["grids"][-1] ** 2, model.config.vision_config.embed_dim[-1])
            assert feats.shape == (1, info["n_img"], model.config.vision_config.projection_dim)
            t = {
                "resized_u8": torch.from_numpy(resized),
                "pixel_values": pv,
                "davit_output": davit,
                "image_features": feats,
            }
            if stem == "photo":
                bg = tuple(int(x * 255) for x in IMAGE_MEAN)
                sq = expand2square(rgb, bg)
                pvp = proc(text="<CAPTION>", images=sq, return_tensors="pt")["pixel_values"].float()
                with torch.no_grad():
                    t["pixel_values_pad"] = pvp
                    t["image_features_pad"] = model.get_image_features(pvp).pooler_output
            save_st(os.path.join(d_hf, f"expected_{stem}.safetensors"), t)
        info_out = dict(info, vision_config=model.config.vision_config.to_dict(),
                        text_config={k: getattr(model.config.text_config, k) for k in (
                            "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
                            "max_position_embeddings", "vocab_size")})
        write_json(os.path.join(d_hf, "fixture_info.json"), info_out)



# Florence-VL's three hard-coded prompts (spec §6.1), as text
FVL_PROMPTS = [
    "Describe in detail what is shown in the image.",
    "What is the text in the image?",
    "Locate the objects in the image, with their descriptions.",
]
F2_GEN_TASKS = [
    ("photo", "<CAPTION>"),
    ("photo", "<OD>"),
    ("text", "<OCR>"),
    ("photo", "<CAPTION_TO_PHRASE_GROUNDING>a red car next to a tree"),
]
GEN_MODES = {
    "greedy": dict(num_beams=1, do_sample=False, max_new_tokens=20, no_repeat_ngram_size=0),
    "beam3": dict(num_beams=3, do_sample=False, max_new_tokens=20, no_repeat_ngram_size=3, early_stopping=True),
}


def load_f2(name):
    d_hf, d_orig = f2_dirs(name)
    model = Florence2ForConditionalGeneration.from_pretrained(d_hf, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(d_hf)
    info = json.load(open(os.path.join(d_hf, "fixture_info.json")))
    return model, proc, info


def fvl_prompt_ids(tokenizer):
    """Tokenize the 3 prompts with <s>..</s>, right-pad with pad id 1 to the longest (spec §6.1)."""
    rows = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in FVL_PROMPTS]
    L = max(len(r) for r in rows)
    return [r + [1] * (L - len(r)) for r in rows]


def run_fvl_encoder(f2model, feats, ids):
    """[V ; prompt_k] through the BART encoder, batch of 3, no attention mask."""
    ids_t = torch.tensor(ids)
    emb = f2model.model.language_model.get_input_embeddings()(ids_t)
    x = torch.cat([feats.expand(len(ids), -1, -1), emb], 1)
    with torch.no_grad():
        return f2model.model.language_model.encoder(inputs_embeds=x, attention_mask=None).last_hidden_state


def bart_original(f2model, info, flb):
    """BartForConditionalGeneration over the ORIGINAL vocabulary with final_logits_bias: the language
    model exactly as Microsoft's remote code runs it from the original-layout checkpoint."""
    from transformers import BartConfig, BartForConditionalGeneration
    tc = f2model.config.text_config.to_dict()
    tc["vocab_size"] = info["n_orig"]
    for k in ("architectures", "model_type", "transformers_version"):
        tc.pop(k, None)
    bart = BartForConditionalGeneration(BartConfig(**tc)).eval().float()
    sd = {}
    for k, v in f2model.model.language_model.state_dict().items():
        if k == "shared.weight" or k.endswith("embed_tokens.weight"):
            v = v[: info["n_orig"]]
        sd["model." + k] = v
    sd["lm_head.weight"] = sd["model.shared.weight"]
    sd["final_logits_bias"] = flb.reshape(1, -1)
    missing, unexpected = bart.load_state_dict(sd, strict=False)
    assert not unexpected and all("embed_tokens" in m for m in missing), (missing, unexpected)
    bart.tie_weights()
    return bart


def stage_florence2_language():
    for name in F2_MODELS:
        log(f"[florence2-{name} language]")
        model, proc, info = load_f2(name)
        d_hf, d_orig = f2_dirs(name)
        n_img = info["n_img"]
        tokenizer = proc.tokenizer
        # --- Florence-VL style batched encoder on the photo
        pil = load_image("photo.png")
        pv = proc(text="<CAPTION>", images=pil.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            feats = model.get_image_features(pv).pooler_output
        ids = fvl_prompt_ids(tokenizer)
        enc = run_fvl_encoder(model, feats, ids)
        save_st(os.path.join(d_hf, "expected_encoder.safetensors"), {
            "image_features": feats, "encoder_hidden_states": enc, "encoder_image_rows": enc[:, :n_img],
        })
        write_json(os.path.join(d_hf, "encoder.json"), {
            "image": "photo.png", "prompts": FVL_PROMPTS, "encoder_prompt_ids": ids, "n_image_tokens": n_img,
            "pad_id": 1, "attention_mask": None,
        })
        # --- generation (HF-native model, vocabulary padded to 64 with zero rows)
        flb = final_logits_bias(name, info)
        bart = bart_original(model, info, flb)
        runs, runs_orig = [], []
        for img, task in F2_GEN_TASKS:
            pil = load_image(f"{img}.png" if img != "text" else "text.jpg")
            inputs = proc(text=task, images=pil, return_tensors="pt")
            ids_all = inputs["input_ids"][0].tolist()
            assert ids_all[:n_img] == [info["image_token_id"]] * n_img
            text_ids = ids_all[n_img:]
            prompt_text = proc._construct_prompts([task])[0]
            with torch.no_grad():
                feats = model.get_image_features(inputs["pixel_values"]).pooler_output
            r = {"image": os.path.basename(pil.filename), "image_size_wh": list(pil.size), "task": task,
                 "prompt_text": prompt_text, "prompt_ids": text_ids, "n_image_tokens": n_img,
                 "processor_input_ids": ids_all}
            ro = dict(r)
            for mode, kw in GEN_MODES.items():
                with torch.no_grad():
                    out = model.generate(**inputs, **kw)
                gen = out[0].tolist()
                assert max(gen) < info["n_orig"], "generated an id outside the original vocabulary"
                text = proc.batch_decode([gen], skip_special_tokens=False)[0]
                task_key = task.split(">")[0] + ">"
                try:
                    parsed = proc.post_process_generation(text, task=task_key, image_size=pil.size)
                except Exception as e:  # random weights can produce unparsable junk
                    parsed = {"error": repr(e)}
                r[mode] = {"ids": gen, "text": text, "post_processed": parsed}
                # original layout (vocab n_orig, final_logits_bias) via BartForConditionalGeneration
                emb = bart.get_input_embeddings()(torch.tensor([text_ids]))
                x = torch.cat([feats, emb], 1)
                with torch.no_grad():
                    eo = bart.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                                       decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2,
                                       bos_token_id=0, eos_token_id=2, pad_token_id=1, **kw)
                ro[mode] = {"ids": eo[0].tolist(),
                            "text": proc.batch_decode([eo[0].tolist()], skip_special_tokens=False)[0]}
            if task == "<CAPTION>":
                # teacher-forced decoder logits over the greedy sequence (all steps), for debugging
                dec_in = torch.tensor([r["greedy"]["ids"][:-1]])
                with torch.no_grad():
                    lg = model(**inputs, decoder_input_ids=dec_in).logits
                save_st(os.path.join(d_hf, "expected_decoder_caption.safetensors"), {"logits": lg})
                r["decoder_logits_input_ids"] = dec_in[0].tolist()
            runs.append(r)
            runs_orig.append(ro)
            log(f"  {task}: greedy {r['greedy']['ids']}\n    beam3 {r['beam3']['ids']}\n    orig greedy {ro['greedy']['ids']}")
        common = {"modes": GEN_MODES, "decoder_start_token_id": 2, "forced_bos_token_id": 0,
                  "forced_eos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}
        write_json(os.path.join(d_hf, "generate.json"), dict(common, vocab_size=info["vocab_hf"], runs=runs))
        write_json(os.path.join(d_orig, "generate.json"),
                   dict(common, vocab_size=info["n_orig"], final_logits_bias="nonzero (in model.safetensors)",
                        runs=runs_orig))



# ----------------------------------------------------------------------------------------------
# Llama (tiny LlamaForCausalLM + Llama-3-style tokenizer)
# ----------------------------------------------------------------------------------------------
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = [  # same order as Llama-3.1 (128000..128009)
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>",
]


def build_llama_tokenizer(n_total, extra_pad=False):
    """Byte-level BPE with the Llama-3 split regex; the 10 Llama-3 specials are the last ids
    (plus an optional Florence-VL `<pad>` after them)."""
    n_bpe = n_total - len(LLAMA3_SPECIALS) - (1 if extra_pad else 0)
    tok = Tokenizer(models.BPE(unk_token=None, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(__import__("tokenizers").Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n_bpe, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS.splitlines() * 3, trainer)
    assert tok.get_vocab_size() == n_bpe, (tok.get_vocab_size(), n_bpe)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in LLAMA3_SPECIALS])
    if extra_pad:
        tok.add_special_tokens([AddedToken("<pad>", normalized=False, special=True)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    assert tok.get_vocab_size() == n_total
    kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    if extra_pad:
        kw["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw), {t: tok.token_to_id(t) for t in LLAMA3_SPECIALS}


LLAMA_MODELS = {
    # (a) llama3 rope scaling, GQA 4:2, tied embeddings, bf16, sharded
    "a": dict(seed=31, vocab=512, dtype="bfloat16", shard="60KB", config=dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    # (b) odd vocab, untied lm_head, MQA 3:1, f32, single file, legacy rope_theta config keys
    "b": dict(seed=32, vocab=517, dtype="float32", shard=None, config=dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
}
LLAMA_PROMPT = "The quick brown fox jumps over the lazy dog at 12:45."


def llama_perturb_(model, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                # small embeddings: with tied weights, large ones make "repeat the last token" the argmax
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            if dtype != torch.float32:
                p.copy_(p.to(dtype).float())


def greedy_no_eos(model, ids, steps, inputs_embeds=None):
    """Plain argmax loop (full recompute, no stopping) — the reference for N fixed steps."""
    out = []
    greedy_no_eos.margins = []
    cur_ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            if inputs_embeds is None:
                lg = model(input_ids=torch.tensor([cur_ids])).logits[0, -1]
            else:
                extra = model.get_input_embeddings()(torch.tensor([out], dtype=torch.long)) if out else None
                emb = inputs_embeds if extra is None else torch.cat([inputs_embeds, extra], 1)
                lg = model(inputs_embeds=emb).logits[0, -1]
            nxt = int(lg.argmax())
            top2 = lg.topk(2).values
            greedy_no_eos.margins.append(float(top2[0] - top2[1]))
            out.append(nxt)
            cur_ids.append(nxt)
    return out


def build_llama(name):
    from transformers import LlamaConfig, LlamaForCausalLM
    spec = LLAMA_MODELS[name]
    torch.manual_seed(spec["seed"])
    tokenizer, special_ids = build_llama_tokenizer(spec["vocab"])
    cfg = LlamaConfig(vocab_size=spec["vocab"], bos_token_id=special_ids["<|begin_of_text|>"],
                      eos_token_id=[special_ids[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
                      attention_bias=False, mlp_bias=False, hidden_act="silu", **spec["config"])
    model = LlamaForCausalLM(cfg).eval().float()
    llama_perturb_(model, spec["seed"] + 1000, getattr(torch, spec["dtype"]))
    return model, tokenizer, special_ids


def stage_llama():
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    for name, spec in LLAMA_MODELS.items():
        log(f"[llama-{name}]")
        d = os.path.join(FIX, f"llama-{name}")
        fresh_dir(d)
        model, tokenizer, sid = build_llama(name)
        dtype = getattr(torch, spec["dtype"])
        eos = [sid["<|end_of_text|>"], sid["<|eom_id|>"], sid["<|eot_id|>"]]
        model.generation_config = GenerationConfig(bos_token_id=sid["<|begin_of_text|>"], eos_token_id=eos,
                                                   do_sample=True, temperature=0.6, top_p=0.9)
        kw = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
        import copy
        copy.deepcopy(model).to(dtype).save_pretrained(d, safe_serialization=True, **kw)
        tokenizer.save_pretrained(d)
        if name == "b":  # legacy config keys (rope_theta / rope_scaling) as older checkpoints write them
            cj = json.load(open(os.path.join(d, "config.json")))
            rp = cj.pop("rope_parameters")
            cj["rope_theta"] = rp["rope_theta"]
            cj["rope_scaling"] = None
            write_json(os.path.join(d, "config.json"), cj)
        re_model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        re_tok = AutoTokenizer.from_pretrained(d)
        ids = re_tok(LLAMA_PROMPT)["input_ids"]
        assert ids == tokenizer(LLAMA_PROMPT)["input_ids"] and ids[0] == sid["<|begin_of_text|>"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
            logits_re = re_model(input_ids=torch.tensor([ids])).logits
        assert torch.allclose(logits, logits_re, atol=1e-5), (logits - logits_re).abs().max()
        fixed = greedy_no_eos(re_model, ids, 32)
        with torch.no_grad():
            gen = re_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=32, eos_token_id=eos,
                                    pad_token_id=sid["<|end_of_text|>"])[0, len(ids):].tolist()
        # HF generate stops at the first eos; up to there it must agree with the plain loop
        assert gen == fixed[: len(gen)], (gen, fixed)
        chat = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello world!<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
        save_st(os.path.join(d, "expected.safetensors"), {"logits": logits})
        write_json(os.path.join(d, "expected.json"), {
            "prompt": LLAMA_PROMPT, "prompt_ids": ids, "special_ids": sid, "eos_token_ids": eos,
            "greedy_32_no_eos": fixed, "greedy_top1_top2_margins": [round(m, 5) for m in greedy_no_eos.margins],
            "greedy_generate_with_eos": gen,
            "chat_text": chat, "chat_ids": tokenizer(chat, add_special_tokens=True)["input_ids"],
            "stored_dtype": spec["dtype"],
            "note": "logits: f32 reference over all prompt positions, computed from the stored weights upcast to f32",
        })
        log(f"  greedy {fixed}\n  generate {gen}")



# ----------------------------------------------------------------------------------------------
# Phi-3 (tiny Phi3ForCausalLM with LongRoPE + SentencePiece-style tokenizer)
# ----------------------------------------------------------------------------------------------
# Phi-3's added tokens after the 32000 SentencePiece pieces (ids 32000..32010 in the real model).
PHI3_ADDED = [
    "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
    "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>",
]
# Phi-3.5-mini-instruct's chat template (tokenizer_config.json).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


def build_phi3_tokenizer(n_base):
    """SentencePiece-style BPE as Phi-3's tokenizer.json: `<unk> <s> </s>`, the 256 byte-fallback
    pieces, merges learnt on ▁-joined text, ▁ prepended (legacy Llama normalizer), then Phi-3's 11
    added tokens in their real relative order. The post-processor prepends `<s>`."""
    from tokenizers import normalizers
    specials = ["<unk>", "<s>", "</s>"]
    n_bytes = 256
    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = norm
    trainer = trainers.BpeTrainer(vocab_size=n_base - len(specials) - n_bytes, show_progress=False)
    trainer_tok.train_from_iterator(CORPUS.splitlines() * 3, trainer)
    learnt = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(n_bytes):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    assert len(vocab) <= n_base, len(vocab)
    k = 0
    while len(vocab) < n_base:  # fill with unused pieces so the added tokens land at n_base
        vocab[f"▁unused{k}"] = len(vocab)
        k += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    # Phi-3 marks the chat tokens special but <|placeholder*|> too; all are added tokens.
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True, rstrip=t == "<|endoftext|>")
                            for t in PHI3_ADDED])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", 1)])
    assert tok.get_vocab_size() == n_base + len(PHI3_ADDED)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
                                 unk_token="<unk>", pad_token="<|endoftext|>")
    hf.chat_template = PHI3_CHAT_TEMPLATE
    return hf, {t: tok.token_to_id(t) for t in specials + PHI3_ADDED}


def phi3_config(vocab, head_dim, seed, **kw):
    """A Phi3Config with LongRoPE: short/long factor lists of head_dim/2 entries around 1."""
    from transformers import Phi3Config
    g = torch.Generator().manual_seed(seed)
    half = head_dim // 2
    short = [round(1.0 + 0.5 * float(x), 4) for x in torch.rand(half, generator=g)]
    long = [round(1.0 + 4.0 * i / half + float(x), 4) for i, x in enumerate(torch.rand(half, generator=g))]
    return Phi3Config(vocab_size=vocab, head_dim=head_dim, hidden_act="silu", attention_bias=False,
                      original_max_position_embeddings=32, max_position_embeddings=512,
                      rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
                                       "long_factor": long},
                      **kw)


# plain Phi-3: tokenizer 400 pieces + 11 added = 411 tokens, vocab_size 448 (padding rows, as 32011 → 32064)
PHI3_MODEL = dict(seed=51, n_base=400, vocab=448, config=dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
    rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None))
PHI3_LONG_PROMPT = "The quick brown fox jumps over the lazy dog. Two people are walking along the beach."
PHI3_SHORT_PROMPT = "A photo of a cat."


def greedy_cached(model, ids, steps, inputs_embeds=None, n_tokens=None):
    """Argmax loop with the KV cache, as HF `generate` runs it for Phi-3 (no stopping). LongRoPE:
    each forward rotates with the long factors when its last position is past
    original_max_position_embeddings. From ids, `Phi3ForCausalLM.prepare_inputs_for_generation`
    drops the cache at the step that crosses that length and recomputes the whole sequence (so
    every key is rotated with the long factors); from `inputs_embeds` it cannot (the ids do not
    hold the prompt) and the cached keys keep the short factors.
    Logits past `n_tokens` (padding rows of the vocabulary) are never chosen; `padding_wins`
    counts the steps where an unmasked argmax would have chosen one."""
    orig = model.config.rope_parameters["original_max_position_embeddings"]
    out, margins = [], []
    greedy_cached.padding_wins = 0
    greedy_cached.refills = 0
    with torch.no_grad():
        if inputs_embeds is None:
            res = model(input_ids=torch.tensor([ids]), use_cache=True)
        else:
            res = model(inputs_embeds=inputs_embeds, use_cache=True)
        for _ in range(steps):
            lg = res.logits[0, -1]
            if n_tokens is not None:
                greedy_cached.padding_wins += int(lg.argmax()) >= n_tokens
                lg = lg[:n_tokens]
            nxt = int(lg.argmax())
            top2 = lg.topk(2).values
            margins.append(float(top2[0] - top2[1]))
            out.append(nxt)
            past = res.past_key_values.get_seq_length()
            if inputs_embeds is None and past + 1 > orig >= past:
                greedy_cached.refills += 1
                res = model(input_ids=torch.tensor([list(ids) + out]), use_cache=True)
            else:
                res = model(input_ids=torch.tensor([[nxt]]), past_key_values=res.past_key_values, use_cache=True)
    greedy_cached.margins = margins
    return out


def save_sharded_bf16(d, sd, shard_bytes):
    """bf16 shards of about `shard_bytes` in name order plus the index, as save_pretrained writes."""
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}
    shards, cur, size = [], {}, 0
    for k in sorted(sd):
        cur[k] = sd[k]
        size += sd[k].numel() * 2
        if size > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
    if cur:
        shards.append(cur)
    weight_map = {}
    for i, sh in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, os.path.join(d, fn), metadata={"format": "pt"})
        weight_map.update({k: fn for k in sh})
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": sum(v.numel() * 2 for v in sd.values())}, "weight_map": weight_map})
    loaded = {}
    for fn in sorted(set(weight_map.values())):
        loaded.update(load_file(os.path.join(d, fn)))
    return loaded


def stage_phi3():
    from transformers import Phi3ForCausalLM, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    log("[phi3-a]")
    d = os.path.join(FIX, "phi3-a")
    fresh_dir(d)
    spec = PHI3_MODEL
    torch.manual_seed(spec["seed"])
    tokenizer, sid = build_phi3_tokenizer(spec["n_base"])
    eos = [sid["<|end|>"], sid["<|assistant|>"], sid["<|endoftext|>"]]  # Phi-3.5's generation_config order
    cfg = phi3_config(spec["vocab"], 16, spec["seed"] + 1, bos_token_id=1, eos_token_id=sid["<|endoftext|>"],
                      pad_token_id=sid["<|endoftext|>"], **spec["config"])
    model = Phi3ForCausalLM(cfg).eval().float()
    llama_perturb_(model, spec["seed"] + 1000, torch.bfloat16)
    n_tok = len(tokenizer)
    with torch.no_grad():  # loud padding rows: an unmasked argmax would pick them
        model.lm_head.weight[n_tok:] *= 4.0
    loaded = save_sharded_bf16(d, model.state_dict(), 40_000)
    # config.json as Phi-3.5-mini ships it (transformers-4 keys): rope_theta and
    # original_max_position_embeddings at the top, rope_scaling {type: longrope, short/long factors}
    rp = cfg.rope_parameters
    cj = cfg.to_dict()
    for k in ("transformers_version", "rope_parameters"):
        cj.pop(k, None)
    cj.update({"architectures": ["Phi3ForCausalLM"], "dtype": "bfloat16", "rope_theta": rp["rope_theta"],
               "original_max_position_embeddings": 32,
               "rope_scaling": {"long_factor": rp["long_factor"], "short_factor": rp["short_factor"],
                                "type": "longrope"}})
    write_json(os.path.join(d, "config.json"), cj)
    tokenizer.save_pretrained(d)
    GenerationConfig(bos_token_id=1, eos_token_id=eos, pad_token_id=sid["<|endoftext|>"]).save_pretrained(d)
    re_model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert re_model.config.rope_parameters["rope_type"] == "longrope"
    ref = Phi3ForCausalLM(cfg).eval().float()
    ref.load_state_dict({k: v.float() for k, v in loaded.items()}, strict=True)
    re_tok = AutoTokenizer.from_pretrained(d)
    runs = {}
    for name, prompt in (("long", PHI3_LONG_PROMPT), ("short", PHI3_SHORT_PROMPT)):
        ids = re_tok(prompt)["input_ids"]
        assert ids == tokenizer(prompt)["input_ids"] and ids[0] == 1
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([ids])).logits
            logits_re = re_model(input_ids=torch.tensor([ids])).logits
        assert torch.allclose(logits, logits_re, atol=1e-5), (logits - logits_re).abs().max()
        fixed = greedy_cached(re_model, ids, 32, n_tokens=n_tok)
        wins = greedy_cached.padding_wins
        assert greedy_cached.refills == (name == "short")
        with torch.no_grad():
            gen = re_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=32, eos_token_id=eos,
                                    suppress_tokens=list(range(n_tok, spec["vocab"])),
                                    pad_token_id=sid["<|endoftext|>"])[0, len(ids):].tolist()
        assert gen == fixed[: len(gen)], (gen, fixed)
        runs[name] = dict(prompt=prompt, prompt_ids=ids, greedy_32_no_eos=fixed, padding_would_win_steps=wins,
                          greedy_top1_top2_margins=[round(m, 5) for m in greedy_cached.margins],
                          greedy_generate_with_eos=gen, logits=logits)
        log(f"  {name}: {len(ids)} prompt ids, greedy {fixed}, padding would win {wins} steps")
    assert len(runs["long"]["prompt_ids"]) > 32 >= len(runs["short"]["prompt_ids"])
    assert len(runs["short"]["prompt_ids"]) + 32 > 32  # the short run crosses during decode
    msgs = [{"role": "system", "content": "You are a helpful AI assistant."},
            {"role": "user", "content": "Hello world!"}]
    chat = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    chat_ids = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "input_ids"):
        chat_ids = chat_ids["input_ids"]
    save_st(os.path.join(d, "expected.safetensors"), {f"logits_{k}": r.pop("logits") for k, r in runs.items()})
    write_json(os.path.join(d, "expected.json"), {
        "runs": runs, "special_ids": sid, "eos_token_ids": eos, "tokenizer_size": len(tokenizer),
        "vocab_size": spec["vocab"], "original_max_position_embeddings": 32,
        "attention_factor": math.sqrt(1 + math.log(512 / 32) / math.log(32)),
        "chat_messages": msgs, "chat_text": chat, "chat_ids": list(chat_ids), "stored_dtype": "bfloat16",
        "note": "logits_*: f32 reference over all prompt positions from the stored bf16 weights; greedy ids from "
                "the cached loop HF generate runs (the short prompt crosses original_max_position_embeddings "
                "while decoding)",
    })


PHI3_SLIDING_WINDOW = 12


def stage_phi3_sliding():
    """phi3-a's stored weights with `config.sliding_window` set to 12, below the long prompt's 58
    tokens: transformers' Phi-3 then masks keys `kv <= q - sliding_window` (masking_utils'
    sliding_window_overlay: query q sees the `sliding_window` keys q-11..q). Writes only
    sliding_window.{json,safetensors} beside phi3-a's own files (run after the phi3 stage)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log("[phi3-a sliding window]")
    d = os.path.join(FIX, "phi3-a")
    w = PHI3_SLIDING_WINDOW
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, sliding_window=w).eval()
    plain = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert model.config.sliding_window == w and plain.config.sliding_window is None
    tok = AutoTokenizer.from_pretrained(d)
    ids = tok(PHI3_LONG_PROMPT)["input_ids"]
    assert len(ids) > 32 and len(ids) > w  # long factors from the start: no refill
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
        full = plain(input_ids=torch.tensor([ids])).logits
    # Up to the window nothing is hidden; past it the window changes the logits.
    assert torch.allclose(logits[0, :w], full[0, :w], atol=1e-6)
    assert (logits[0, w:] - full[0, w:]).abs().amax(-1).min() > 1e-3
    n_tok = len(tok)
    fixed = greedy_cached(model, ids, 32, n_tokens=n_tok)
    # The cached loop agrees with recomputing the whole sequence under the mask each step.
    with torch.no_grad():
        seq = list(ids)
        for want in fixed[:8]:
            lg = model(input_ids=torch.tensor([seq])).logits[0, -1, :n_tok]
            assert int(lg.argmax()) == want
            seq.append(want)
    save_st(os.path.join(d, "sliding_window.safetensors"), {"logits_long": logits[0]})
    write_json(os.path.join(d, "sliding_window.json"), {
        "sliding_window": w, "prompt_ids": ids, "greedy_32_no_eos": fixed,
        "greedy_top1_top2_margins": [round(m, 5) for m in greedy_cached.margins],
        "note": "phi3-a's weights with config.sliding_window = 12; logits_long: f32 logits over all positions of "
                "the long prompt; greedy ids from the cached loop HF generate runs",
    })
    log(f"  window {w}: greedy {fixed}")


# ----------------------------------------------------------------------------------------------
# Florence-VL (LLaVA layout: Llama + mm_projector + nested original-named Florence-2 tower)
# ----------------------------------------------------------------------------------------------
FVL_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")
FVL_QUESTION = "What is shown in the image?"
IMAGE_TOKEN_INDEX = -200


def llama3_prompt(question):
    return (f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{FVL_SYSTEM}<|eot_id|>"
            f"<|start_header_id|>user<|end_header_id|>\n\n<image>\n{question}<|eot_id|>"
            f"<|start_header_id|>assistant<|end_header_id|>\n\n")


def tokenizer_image_token(prompt, tokenizer, bos_id):
    """Florence-VL llava/mm_utils.py tokenizer_image_token (spec §7.3)."""
    chunks = [tokenizer(c, add_special_tokens=True)["input_ids"] for c in prompt.split("<image>")]
    out = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == bos_id:
        offset = 1
        out.append(chunks[0][0])
    for i, c in enumerate(chunks):
        if i > 0:
            out.append(IMAGE_TOKEN_INDEX)
        out.extend(c[offset:])
    return out


def phi3_prompt(question):
    """Florence-VL's `phi3` conversation template (spec §7.4); the tokenizer adds `<s>` itself."""
    return (f"<|system|>\n{FVL_PHI3_SYSTEM}<|end|>\n<|user|>\n<image>\n{question}<|end|>\n<|assistant|>\n")


FVL_PHI3_SYSTEM = "You are a helpful AI assistant."


def fvl_llm_llama(H):
    """florence-vl-tiny's LLM: a tiny Llama-3.1-like, vocab = 512 + Florence-VL's added <pad>."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(41)
    tokenizer, sid = build_llama_tokenizer(513, extra_pad=True)
    pad_id = tokenizer.convert_tokens_to_ids("<pad>")
    bos = sid["<|begin_of_text|>"]
    eos = [sid["<|end_of_text|>"], sid["<|eom_id|>"], sid["<|eot_id|>"]]
    cfg = LlamaConfig(vocab_size=513, hidden_size=H, intermediate_size=112, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos,
                      pad_token_id=pad_id, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32})
    return dict(cls=LlamaForCausalLM, cfg=cfg, tokenizer=tokenizer, bos=bos, eos=eos, pad=pad_id, n_tokens=None,
                prompt=llama3_prompt, arch=("LlavaLlamaForCausalLM", "llava_llama"), steps=16,
                greedy=lambda m, e: greedy_no_eos(m, [], 16, inputs_embeds=e), answer_key="answer_ids_16_no_eos")


def fvl_llm_phi3(H):
    """The 3B's LLM in small: a tiny Phi-3 with LongRoPE (original 32, so the answer crosses it) and
    a padded vocabulary; Florence-VL adds no token (Phi-3 has a pad token)."""
    from transformers import Phi3ForCausalLM
    torch.manual_seed(61)
    tokenizer, sid = build_phi3_tokenizer(400)
    eos = [sid["<|end|>"], sid["<|assistant|>"], sid["<|endoftext|>"]]
    pad = sid["<|endoftext|>"]
    cfg = phi3_config(448, 16, 62, hidden_size=H, intermediate_size=112, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=pad, pad_token_id=pad, sliding_window=None)
    n_tok = len(tokenizer)

    def greedy(m, e):
        ids = greedy_cached(m, [], 32, inputs_embeds=e, n_tokens=n_tok)
        greedy_no_eos.margins = greedy_cached.margins
        return ids
    return dict(cls=Phi3ForCausalLM, cfg=cfg, tokenizer=tokenizer, bos=1, eos=eos, pad=pad, n_tokens=n_tok,
                prompt=phi3_prompt, arch=("LlavaPhiForCausalLM", "llava_phi"), steps=32, greedy=greedy,
                answer_key="answer_ids_32_no_eos")


FVL_VARIANTS = {"florence-vl-tiny": (fvl_llm_llama, 1041, 1042), "florence-vl-phi-tiny": (fvl_llm_phi3, 1061, 1062)}


def stage_florence_vl(name):
    build_llm, llm_seed, proj_seed = FVL_VARIANTS[name]
    log(f"[{name}]")
    d = os.path.join(FIX, name)
    fresh_dir(d)
    # vision tower: florence2-a's weights, rounded to bf16 (the checkpoint stores bf16)
    f2, proc, info = load_f2("a")
    with torch.no_grad():
        for t in list(f2.parameters()) + list(f2.buffers()):
            if t.dtype.is_floating_point:
                t.copy_(t.to(torch.bfloat16).float())
    tower = original_state_dict(f2, info, False, torch.zeros(info["n_orig"]))
    tensors, out = florence_vl_fixture(d, build_llm(64), llm_seed, proj_seed, f2, proc, tower,
                                       "florence2-a-original", 150_000)
    save_st(os.path.join(d, "expected.safetensors"), tensors)
    write_json(os.path.join(d, "expected.json"), dict({
        "image": "photo.png", "pad_to_square_background": [int(x * 255) for x in IMAGE_MEAN],
        "florence2_tokenizer": "florence2-a"}, **out))


def florence_vl_fixture(d, L, llm_seed, proj_seed, f2, proc, tower, mm_vision_tower, shard_bytes):
    """Writes a Florence-VL checkpoint in the LLaVA layout into `d` (the LLM `L` perturbed with
    `llm_seed`, an mlp3x_gelu projector from `proj_seed`, the Florence-2 tower's original-named
    tensors `tower` under model.vision_tower.vision_tower. — none if empty — in bf16 shards of about
    `shard_bytes`, `mm_vision_tower` in the config) and computes the reference on the photo with
    the tower model `f2` and its processor. Returns (expected tensors, expected.json fields)."""
    from transformers import GenerationConfig
    bf16 = torch.bfloat16
    D = f2.config.vision_config.projection_dim
    H = L["cfg"].hidden_size
    tokenizer, cfg, bos, eos, pad_id = L["tokenizer"], L["cfg"], L["bos"], L["eos"], L["pad"]
    llm = L["cls"](cfg).eval().float()
    llama_perturb_(llm, llm_seed, bf16)
    # projector mlp3x_gelu: Linear(4D->H), GELU, Linear(H->H), GELU, Linear(H->H)
    g = torch.Generator().manual_seed(proj_seed)
    proj = {}
    for key, (i, o) in {"0": (4 * D, H), "1.1": (H, H), "2.1": (H, H)}.items():
        proj[f"encoder_mlp.{key}.weight"] = (torch.randn(o, i, generator=g) / math.sqrt(i)).to(bf16).float()
        proj[f"encoder_mlp.{key}.bias"] = (0.1 * torch.randn(o, generator=g)).to(bf16).float()

    def projector(x):
        gelu = torch.nn.functional.gelu
        x = x @ proj["encoder_mlp.0.weight"].t() + proj["encoder_mlp.0.bias"]
        x = gelu(x) @ proj["encoder_mlp.1.1.weight"].t() + proj["encoder_mlp.1.1.bias"]
        x = gelu(x) @ proj["encoder_mlp.2.1.weight"].t() + proj["encoder_mlp.2.1.bias"]
        return x

    # --- save the checkpoint in the LLaVA layout (bf16, ~150 KB shards)
    sd = {k: v for k, v in llm.state_dict().items()}
    for k, v in proj.items():
        sd[f"model.mm_projector.{k}"] = v
    for k, v in tower.items():
        sd[f"model.vision_tower.vision_tower.{k}"] = v
    loaded = save_sharded_bf16(d, sd, shard_bytes)
    cj = cfg.to_dict()
    for k in ("transformers_version",):
        cj.pop(k, None)
    cj.update({
        "architectures": [L["arch"][0]], "model_type": L["arch"][1], "dtype": "bfloat16",
        "mm_vision_tower": mm_vision_tower, "mm_projector_type": "mlp3x_gelu", "mm_hidden_size": D,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad", "tokenizer_padding_side": "right", "tokenizer_model_max_length": 2048,
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "use_mm_proj": True,
        "tune_mm_mlp_adapter": False, "mm_projector_lr": None, "freeze_mm_mlp_adapter": False,
    })
    write_json(os.path.join(d, "config.json"), cj)
    tokenizer.save_pretrained(d)
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad_id, do_sample=True,
                     temperature=0.6, top_p=0.9).save_pretrained(d)
    # reference LLM = the saved LLM tensors upcast to f32 (round-trip through the files)
    llm_ref = L["cls"](cfg).eval().float()
    llm_ref.load_state_dict({k: loaded[k].float() for k in llm.state_dict()}, strict=True)

    # --- reference computation (spec §2.1, §6, §7.3)
    pil = load_image("photo.png").convert("RGB")
    sq = expand2square(pil, tuple(int(x * 255) for x in IMAGE_MEAN))
    pv = proc(text="<CAPTION>", images=sq, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        V = f2.get_image_features(pv).pooler_output  # [1, N, D]
        ids3 = fvl_prompt_ids(proc.tokenizer)
        enc = run_fvl_encoder(f2, V, ids3)  # [3, N+L, D]
        n = V.shape[1]
        fused = torch.cat([V[0], enc[0, :n], enc[1, :n], enc[2, :n]], -1)  # [N, 4D]
        projected = projector(fused)  # [N, H]
    prompt = L["prompt"](FVL_QUESTION)
    input_ids = tokenizer_image_token(prompt, tokenizer, bos)
    llama = L["arch"][1] == "llava_llama"
    assert input_ids[:2] == ([bos, bos] if llama else [bos, tokenizer.convert_tokens_to_ids("<|system|>")])
    assert input_ids.count(IMAGE_TOKEN_INDEX) == 1 and input_ids.count(bos) == (2 if llama else 1)
    pos = input_ids.index(IMAGE_TOKEN_INDEX)
    emb = llm_ref.get_input_embeddings()
    with torch.no_grad():
        pre = emb(torch.tensor([input_ids[:pos]]))
        post = emb(torch.tensor([input_ids[pos + 1:]]))
        inputs_embeds = torch.cat([pre, projected[None], post], 1)
        prefill_logits = llm_ref(inputs_embeds=inputs_embeds).logits[0, -1]
    answer = L["greedy"](llm_ref, inputs_embeds)
    margins = greedy_no_eos.margins
    extra = {} if L["n_tokens"] is None else {"suppress_tokens": list(range(L["n_tokens"], cfg.vocab_size))}
    with torch.no_grad():
        gen = llm_ref.generate(inputs_embeds=inputs_embeds, attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long),
                               do_sample=False, max_new_tokens=L["steps"], eos_token_id=eos, pad_token_id=pad_id,
                               **extra)[0].tolist()
    assert gen == answer[: len(gen)], (gen, answer)
    tensors = {
        "pixel_values": pv, "image_features": V, "encoder_image_rows": enc[:, :n], "fused": fused[None],
        "projected": projected[None], "inputs_embeds": inputs_embeds, "last_logits": prefill_logits[None],
    }
    out = {
        "encoder_prompts": FVL_PROMPTS, "encoder_prompt_ids": ids3,
        "n_image_tokens": n, "question": FVL_QUESTION, "prompt_text": prompt, "input_ids": input_ids,
        "image_token_index": IMAGE_TOKEN_INDEX, "merged_length": inputs_embeds.shape[1],
        L["answer_key"]: answer, "greedy_top1_top2_margins": [round(m, 5) for m in margins],
        "answer_generate_with_eos": gen, "eos_token_ids": eos, "pad_token_id": pad_id,
    }
    if L["n_tokens"] is not None:
        out["tokenizer_size"] = L["n_tokens"]
        out["padding_would_win_steps"] = greedy_cached.padding_wins
    log(f"  input_ids {input_ids}\n  answer {answer}")
    return tensors, out


# ----------------------------------------------------------------------------------------------
# Published layouts (issue 10): a Florence-2 repo as Microsoft publishes it, a Florence-VL repo
# whose tower is a hub id (the tower repo has the same layout as Microsoft's), both laid into a
# Hugging Face cache folder exactly as the hub client lays them.
# ----------------------------------------------------------------------------------------------
HF_CACHE = os.path.join(FIX, "hf-cache")
PUBLISHED = os.path.join(FIX, "published")
MS_REPO = "fvl-test/Florence-2-tiny"
FVL_REPO = "fvl-test/florence-vl-tiny-sft"
MS_SPEC = dict(
    image=64, bpe_vocab=400, seed=61, dtype="float16",
    vision=dict(embed_dim=[8, 16, 16, 32], num_heads=[1, 2, 2, 4], num_groups=[1, 2, 2, 4], depths=[1, 1, 1, 1],
                window_size=3, projection_dim=32, max_position_embeddings=12, max_temporal_embeddings=20),
    text=dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
)
# Microsoft's generation_config.json asks for no forced BOS; the beam settings are only in text_config.
MS_GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 0, "decoder_start_token_id": 2,
                        "eos_token_id": 2, "forced_eos_token_id": 2, "pad_token_id": 1,
                        "transformers_version": "4.41.0.dev0"}
GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id",
                   "forced_eos_token_id", "num_beams", "no_repeat_ngram_size", "early_stopping", "max_length")
MS_MODES = {
    "greedy": dict(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=20),
    "config": dict(max_new_tokens=20),  # everything else as the repo's configs say
}


def torch_save_reproducible(obj, path):
    """torch.save, then the random `.data/serialization_id` record zeroed (same length, CRC fixed in
    the local header and the central directory) so reruns give identical bytes."""
    import struct
    import zipfile
    import zlib
    torch.save(obj, path)
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".data/serialization_id"))
    h = info.header_offset
    assert data[h:h + 4] == b"PK\x03\x04"
    n, m = struct.unpack("<HH", data[h + 26:h + 30])
    start = h + 30 + n + m
    new = b"0" * info.file_size
    data[start:start + info.file_size] = new
    crc = zlib.crc32(new)
    struct.pack_into("<I", data, h + 14, crc)
    name = info.filename.encode()
    c = data.find(b"PK\x01\x02")
    while c >= 0:
        nl = struct.unpack("<H", data[c + 28:c + 30])[0]
        if data[c + 46:c + 46 + nl] == name:
            struct.pack_into("<I", data, c + 16, crc)
            break
        c = data.find(b"PK\x01\x02", c + 4)
    assert c >= 0
    with open(path, "wb") as f:
        f.write(data)
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


def lay_into_cache(cache, repo_id, src):
    """Copies folder `src` into `cache` as huggingface_hub lays a download out:
    models--owner--name/blobs/<etag> (sha256 for LFS files, the git blob sha1 for the others),
    refs/main holding the commit sha, snapshots/<sha>/<file> relative symlinks to the blobs.
    The commit sha is derived from the files, so reruns give the same tree."""
    import hashlib
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    fresh_dir(repo)
    etags = {}
    for name in sorted(os.listdir(src)):
        data = open(os.path.join(src, name), "rb").read()
        if name.endswith((".bin", ".safetensors")):
            etags[name] = hashlib.sha256(data).hexdigest()
        else:
            etags[name] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
        with open(os.path.join(repo, "blobs", etags[name]), "wb") as f:
            f.write(data)
    commit = hashlib.sha1(json.dumps(sorted(etags.items())).encode()).hexdigest()
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(snap)
    for name, etag in etags.items():
        os.symlink(os.path.join("..", "..", "blobs", etag), os.path.join(snap, name))
    log(f"  laid {repo_id} into {rel(repo)} (snapshot {commit[:12]}, {len(etags)} files)")
    return snap


def generation_settings(text_config, generation_config):
    """The decoding settings transformers applies: text_config's, overridden by generation_config.json's."""
    out = {k: text_config[k] for k in GENERATION_KEYS if k in text_config}
    out.update({k: v for k, v in generation_config.items() if k in GENERATION_KEYS})
    return out


def write_microsoft_repo(d, model, info):
    """A Florence-2 repo as Microsoft publishes it: fp16 pytorch_model.bin (original names, the four
    tied embeddings sharing one storage), bare BART tokenizer files, remote-code config with the
    early revisions' wrong top-level ids, preprocessor and generation configs. Returns config.json."""
    from collections import OrderedDict
    osd = original_state_dict(model, info, False, torch.zeros(info["n_orig"]))
    sd = OrderedDict((k, v.half()) for k, v in osd.items())
    shared = sd["language_model.model.shared.weight"]
    for k in ("language_model.model.encoder.embed_tokens.weight", "language_model.model.decoder.embed_tokens.weight",
              "language_model.lm_head.weight"):
        sd[k] = shared
    torch_save_reproducible(sd, os.path.join(d, "pytorch_model.bin"))
    back = torch.load(os.path.join(d, "pytorch_model.bin"), weights_only=True)
    assert len({back[k].untyped_storage().data_ptr() for k in back if k.endswith(("shared.weight", "embed_tokens.weight", "lm_head.weight"))}) == 1
    assert all(torch.equal(back[k].float(), osd[k]) for k in osd)
    cfg = original_config(model, info, "float16")
    cfg.update(bos_token_id=2, eos_token_id=1, pad_token_id=0)  # wrong, as early revisions had them
    del cfg["text_config"]["forced_bos_token_id"]
    write_json(os.path.join(d, "config.json"), cfg)
    write_json(os.path.join(d, "generation_config.json"), MS_GENERATION_CONFIG)
    write_json(os.path.join(d, "preprocessor_config.json"),
               dict({"auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"}},
                    **preprocessor_config(info["image"], info["n_img"])))
    bare, n_base, n_orig = build_bart_like_tokenizer(MS_SPEC["bpe_vocab"], florence_tokens=False)
    assert (n_base, n_orig) == (info["n_base"], info["n_orig"])
    bare.save(os.path.join(d, "tokenizer.json"))
    vocab = bare.get_vocab(with_added_tokens=True)  # BART's vocab.json holds <mask> too
    assert len(vocab) == n_base
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(dict(sorted(vocab.items(), key=lambda kv: kv[1])), f, ensure_ascii=False)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        bare.model.save(tmp)
        shutil.copy(os.path.join(tmp, "merges.txt"), os.path.join(d, "merges.txt"))
    write_json(os.path.join(d, "tokenizer_config.json"), {"model_max_length": 1024})
    return cfg


def stage_published():
    from transformers import GenerationConfig
    import tempfile
    log("[published: Microsoft-style Florence-2, Florence-VL with a hub-id tower, hub cache]")
    fresh_dir(HF_CACHE)
    fresh_dir(PUBLISHED)
    staging = tempfile.mkdtemp()
    ms_dir, fvl_dir = os.path.join(staging, "ms"), os.path.join(staging, "fvl")
    os.makedirs(ms_dir)
    os.makedirs(fvl_dir)

    # --- the Florence-2 repo and its reference (HF-native model for vision, BART over the
    # original vocabulary for generation, the processor for prompts and post-processing)
    model, tok, info = build_florence2("ms", MS_SPEC)
    model.float()
    ms_cfg = write_microsoft_repo(ms_dir, model, info)
    proc = make_processor(tok, info["image"], info["n_img"])
    bart = bart_original(model, info, torch.zeros(info["n_orig"]))
    settings = generation_settings(ms_cfg["text_config"], MS_GENERATION_CONFIG)
    assert "forced_bos_token_id" not in settings and settings["num_beams"] == 3
    runs = []
    for img, task in F2_GEN_TASKS:
        pil = load_image(f"{img}.png" if img != "text" else "text.jpg")
        inputs = proc(text=task, images=pil, return_tensors="pt")
        text_ids = inputs["input_ids"][0].tolist()[info["n_img"]:]
        with torch.no_grad():
            feats = model.get_image_features(inputs["pixel_values"]).pooler_output
        x = torch.cat([feats, bart.get_input_embeddings()(torch.tensor([text_ids]))], 1)
        r = {"image": os.path.basename(pil.filename), "image_size_wh": list(pil.size), "task": task,
             "prompt_text": proc._construct_prompts([task])[0], "prompt_ids": text_ids,
             "n_image_tokens": info["n_img"]}
        for mode, kw in MS_MODES.items():
            gc = GenerationConfig(**dict(settings, do_sample=False, **{k: v for k, v in kw.items() if k != "max_new_tokens"}))
            with torch.no_grad():
                out = bart.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                                    generation_config=gc, max_new_tokens=kw["max_new_tokens"])
            gen = out[0].tolist()
            text = proc.batch_decode([gen], skip_special_tokens=False)[0]
            try:
                parsed = proc.post_process_generation(text, task=task.split(">")[0] + ">", image_size=pil.size)
            except Exception as e:  # random weights can produce unparsable junk
                parsed = {"error": repr(e)}
            r[mode] = {"ids": gen, "text": text, "post_processed": parsed}
        runs.append(r)
        log(f"  {task}: greedy {r['greedy']['ids']}\n    config {r['config']['ids']}")
    assert any(r["greedy"]["ids"][1] != 0 for r in runs), "no run shows that <s> is not forced"
    write_json(os.path.join(PUBLISHED, "florence2_generate.json"), dict(
        {"repo": MS_REPO, "modes": MS_MODES, "settings_from_configs": settings, "vocab_size": info["n_orig"]},
        runs=runs))

    # --- the Florence-VL repo: Llama + projector only; the tower (config, weights, tokenizer,
    # preprocessor) comes from the Florence-2 repo named by hub id
    tensors, out = florence_vl_fixture(fvl_dir, fvl_llm_llama(32), 1071, 1072, model, proc, {}, MS_REPO, 40_000)
    write_json(os.path.join(PUBLISHED, "florence_vl_expected.json"), dict(
        {"repo": FVL_REPO, "image": "photo.png", "tower_repo": MS_REPO}, **out))

    # --- the cache, checked with huggingface_hub itself (offline)
    from huggingface_hub import hf_hub_download
    for repo_id, src in ((MS_REPO, ms_dir), (FVL_REPO, fvl_dir)):
        snap = lay_into_cache(HF_CACHE, repo_id, src)
        for name in os.listdir(src):
            got = hf_hub_download(repo_id, name, cache_dir=HF_CACHE, local_files_only=True)
            assert os.path.samefile(got, os.path.join(snap, name))
            assert open(got, "rb").read() == open(os.path.join(src, name), "rb").read()
    shutil.rmtree(staging)



# ----------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", default="f2,f2lang,llama,fvl,phi3,phi3sw,fvlphi,published")
    args = ap.parse_args()
    stages = args.stages.split(",")
    log(f"transformers {transformers.__version__}, torch {torch.__version__}")
    os.makedirs(FIX, exist_ok=True)
    if "f2" in stages:
        stage_florence2()
    if "f2lang" in stages:
        stage_florence2_language()
    if "llama" in stages:
        stage_llama()
    if "fvl" in stages:
        stage_florence_vl("florence-vl-tiny")
    if "phi3" in stages:
        stage_phi3()
    if "phi3sw" in stages:
        stage_phi3_sliding()
    if "fvlphi" in stages:
        stage_florence_vl("florence-vl-phi-tiny")
    if "published" in stages:
        stage_published()


if __name__ == "__main__":
    main()
