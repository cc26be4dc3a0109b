"""Golden outputs of the reference implementations, for mm's pretrained-weight parity tests.

For each model the weights come from a formula both sides can compute (no weights file is
committed): element i of the tensor named N is `offset + scale * u(N, i)`, where u is a
uniform number in [-1, 1) with 24 bits, made from splitmix64 over the FNV-1a hash of N plus i
(`formula_values` below; the Rust test has the same function). The input comes from the same
formula under the name "input". The golden file lists every tensor (name, shape, offset,
scale) in the reference's own naming, the input, and the reference's outputs in evaluation
mode:

- resnet18, resnet50: torchvision 0.28 (`torchvision.models.resnetXX(weights=None)`),
  pooled features before `fc`, on a [2, 3, 64, 64] input;
- vgg16: torchvision 0.28, the 4096 features of `classifier.4` (after the second fully
  connected layer and its ReLU), on [2, 3, 64, 64]; the tensors are listed in timm's naming
  (`pre_logits.fc1`, a 7x7 convolution, etc.), the layout of the weights `fetch-data` gets;
- clip_tiny: Hugging Face transformers' `CLIPModel` with a tiny configuration (written to
  clip_tiny/config.json, with a preprocessor_config.json) and a byte-level BPE
  `tokenizer.json` built here in the layout of openai/clip-vit-base-patch32's (clip_tiny/):
  token ids of three sentences, `text_embeds`, `image_embeds` of a [2, 3, 32, 32] formula
  input and of a [1, 3, 48, 40] one (positions interpolated), `logits_per_image`; and a
  zero-shot case end to end: two images whose pixels come from the formula (pixel =
  96 + floor((u + 1) * 32), 40x56 and 60x36), the pixels CLIP's image processor (its PIL backend:
  bicubic resize of the shorter side, centre crop) makes of them, and the probabilities of
  the labels through the template;
- vit_torchvision, vit_hf: a tiny Vision Transformer (32x32 images in 8x8 patches, 2 layers,
  32 wide) as torchvision 0.28's `VisionTransformer` (the class token's features before
  `heads`) and as transformers' `ViTModel` (config written to vit_tiny/config.json;
  `last_hidden_state`, and the class token of a [1, 3, 48, 40] input with interpolated
  positions), on a [2, 3, 32, 32] formula input;
- open_clip_tiny: open_clip 3.3's `CLIP` (OpenAI's layout: packed query/key/value, projections
  as [width, embedding]) with a tiny configuration (written to open_clip_tiny/
  open_clip_config.json): `encode_text` of the three sentences (clip_tiny's token ids, the
  end-of-text token renumbered to 340, above every id of its 340, since open_clip pools at the
  argmax, padded
  with 0 as open_clip's tokenizer pads) and `encode_image` of the formula input;
- whisper_tiny: transformers' `WhisperForConditionalGeneration` with a tiny configuration
  (8 mel bins, 16 wide, Whisper's 1500 positions; written to whisper_tiny/config.json with a
  byte-level BPE tokenizer.json holding Whisper's special tokens; the output projection tied
  to the token embedding, so the listing has the parameters once), on whisper_tiny/speech.wav
  (1.5 s of formula samples at 16 kHz): `WhisperFeatureExtractor`'s log-mel features (the first
  300 frames and the maximum), the encoder's first 64 positions, the logits of the start tokens
  (<|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>), the token ids of greedy
  decoding (the whole prefix recomputed each step, no cache) up to 24 tokens or
  <|endoftext|>, and their text;
- bert_tiny: Hugging Face transformers' `BertModel` with a tiny configuration (written to
  bert_tiny/config.json) and a WordPiece `tokenizer.json` built here (bert_tiny/), on three
  sentences: the token ids and attention mask `BertTokenizerFast` gives (also truncated), then
  `last_hidden_state` and `pooler_output`.

    pip install --target DIR --no-deps torchvision==0.28.0 transformers tokenizers safetensors open_clip_torch ftfy ...
    PYTHONPATH=<torch site>:DIR python3 make_golden.py            # writes the files beside it
    PYTHONPATH=... python3 make_golden.py --only clip_tiny         # one of them

With real weights (fetched by `cargo xtask fetch-data resnet50 bert-base-uncased`), writes the
reference outputs of the real models, which the tests compare when the files are there:

    PYTHONPATH=... python3 make_golden.py --real data             # writes data/NAME/reference.json
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
M64 = (1 << 64) - 1


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def formula_values(name, n):
    """u(name, i) for i < n, as float32 (exact: 24-bit integers over 2^23, minus 1)."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


def tensor(name, shape, offset, scale):
    offset, scale = np.float32(offset), np.float32(scale)
    u = formula_values(name, int(np.prod(shape)))
    return torch.from_numpy((u * scale + offset).reshape(shape)), {
        "name": name, "shape": list(shape), "offset": float(offset), "scale": float(scale)}


def rule_image(name, shape):
    """Offset and scale for an image network's tensor: He-uniform weights, batch norm near
    identity (the last one of each residual branch damped, so depth does not blow up)."""
    if name.endswith("running_var"):
        return 1.0, 0.5
    if name.endswith("running_mean") or name.endswith("bias"):
        return 0.0, 0.1
    if len(shape) == 1:  # batch-norm weight
        last = name.endswith(("bn2.weight", "bn3.weight")) and "layer" in name
        return (0.3, 0.1) if last else (1.0, 0.2)
    fan_in = int(np.prod(shape[1:]))
    return 0.0, float(np.sqrt(6.0 / fan_in))


def rule_bert(name, shape):
    if "LayerNorm" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)
    if name.endswith("bias"):
        return 0.0, 0.05
    if "embeddings" in name:
        return 0.0, 0.5
    return 0.0, float(np.sqrt(3.0 / shape[1]))


def fill(model, rule, rename=None):
    """Sets every tensor of model's state dict by the formula; returns the listing, in the
    file's naming (rename maps a state-dict name and tensor to the file's, or None to leave
    it out of the listing)."""
    listing, sd = [], model.state_dict()
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            continue
        file_name, file_shape = (name, list(t.shape)) if rename is None else rename(name, list(t.shape))
        offset, scale = rule(name, list(t.shape))
        values, entry = tensor(file_name, file_shape, offset, scale)
        with torch.no_grad():
            t.copy_(values.reshape(t.shape))
        listing.append(entry)
    return listing


def write(name, payload):
    path = os.path.join(HERE, f"golden_{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}")


def flat(t):
    return [float(f"{v:.7g}") for v in t.detach().reshape(-1).tolist()]


def image_golden():
    import torchvision
    for arch in ["resnet18", "resnet50", "vgg16"]:
        m = getattr(torchvision.models, arch)(weights=None).eval()
        rename = None
        if arch == "vgg16":
            def rename(name, shape):
                # timm's names and shapes for torchvision's VGG weights (its _filter_fn).
                if name.startswith("classifier.0."):
                    return name.replace("classifier.0", "pre_logits.fc1"), [shape[0], 512, 7, 7] if len(shape) == 2 else shape
                if name.startswith("classifier.3."):
                    return name.replace("classifier.3", "pre_logits.fc2"), [shape[0], shape[1], 1, 1] if len(shape) == 2 else shape
                if name.startswith("classifier.6."):
                    return name.replace("classifier.6", "head.fc"), shape
                return name, shape
        listing = fill(m, rule_image, rename)
        x, x_entry = tensor("input", [2, 3, 64, 64], 0.0, 1.0)
        with torch.no_grad():
            if arch.startswith("resnet"):
                m.fc = torch.nn.Identity()
            else:
                m.classifier = m.classifier[:5]  # up to the second ReLU (dropout is off in eval)
            y = m(x)
        write(arch, {"reference": f"torchvision {torchvision.__version__}, torch {torch.__version__}",
                     "tensors": listing, "input": x_entry, "output_shape": list(y.shape), "output": flat(y)})


SENTENCES = ["A dog runs on the beach.", "Two children PLAY football, in the park!", "Crème brûlée € 42"]


def tiny_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    words = ["a", "dog", "run", "on", "the", "beach", "two", "child", "play", "foot", "ball", "in", "park", "cr", "bru"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,!?") + letters + ["##" + c for c in letters]
    vocab += words + ["##s", "##ren", "##ee", "##me"]
    ids = {t: i for i, t in enumerate(dict.fromkeys(vocab))}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    return len(ids)


def bert_golden():
    import transformers
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder = os.path.join(HERE, "bert_tiny")
    vocab_size = tiny_tokenizer(folder)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, type_vocab_size=2)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({k: v for k, v in config.to_dict().items() if k in (
            "architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
            "position_embedding_type")} | {"architectures": ["BertModel"], "model_type": "bert"}, f, indent=2)
        f.write("\n")
    m = BertModel(config).eval()
    listing = fill(m, rule_bert)
    tok = BertTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    truncated = tok(SENTENCES, truncation=True, max_length=8)["input_ids"]
    with torch.no_grad():
        out = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    write("bert_tiny", {
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "tensors": listing, "sentences": SENTENCES,
        "input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist(),
        "truncated_8": truncated,
        "last_hidden_state_shape": list(out.last_hidden_state.shape), "last_hidden_state": flat(out.last_hidden_state),
        "pooler_output": flat(out.pooler_output)})


def rule_clip(name, shape):
    if "norm" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)
    if name == "logit_scale":
        return 2.6592, 0.0
    if name.endswith("bias"):
        return 0.0, 0.05
    if "embedding" in name:
        return 0.0, 0.5
    fan_in = int(np.prod(shape[1:]))
    return 0.0, float(np.sqrt(3.0 / fan_in))


CLIP_CORPUS = SENTENCES + ["a photo of a dog.", "a photo of a cat.", "a photo of a car.", "the cat sat on the mat",
                           "children play in the park", "a red car on the road"] * 3
ZERO_SHOT_LABELS = ["dog", "cat", "car"]
ZERO_SHOT_TEMPLATE = "a photo of a {}."


def clip_tokenizer(folder):
    """A byte-level BPE in the layout of openai/clip-vit-base-patch32's tokenizer.json."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    tok = Tokenizer(BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CLIP_CORPUS, trainer)
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", eos), ("<|startoftext|>", bos),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    return tok, bos, eos


def formula_pixels(name, h, w):
    """Noise in [96, 160): bicubic overshoot stays inside [0, 255], so no resize clips."""
    u = formula_values(name, h * w * 3)
    return (np.float32(96.0) + (u + np.float32(1.0)) * np.float32(32.0)).astype(np.uint8).reshape(h, w, 3)


def clip_golden():
    import transformers
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    folder = os.path.join(HERE, "clip_tiny")
    tok, bos, eos = clip_tokenizer(folder)
    text = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
                   "logit_scale_init_value": 2.6592, "text_config": text, "vision_config": vision}, f, indent=2)
        f.write("\n")
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump({"crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_normalize": True,
                   "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "image_mean": processor.image_mean,
                   "image_std": processor.image_std, "resample": 3, "size": {"shortest_edge": 32},
                   "image_processor_type": "CLIPImageProcessor"}, f, indent=2)
        f.write("\n")
    m = CLIPModel(config).eval()
    listing = fill(m, rule_clip)
    tok.enable_padding(pad_id=eos, pad_token="<|endoftext|>")
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    x, x_entry = tensor("input", [2, 3, 32, 32], 0.0, 1.0)
    x2, x2_entry = tensor("input_48x40", [1, 3, 48, 40], 0.0, 1.0)
    images = [formula_pixels("image0", 40, 56), formula_pixels("image1", 60, 36)]
    pixel_values = processor([Image.fromarray(i) for i in images], return_tensors="pt")["pixel_values"]
    prompts = [ZERO_SHOT_TEMPLATE.format(label) for label in ZERO_SHOT_LABELS]
    penc = tok.encode_batch(prompts)
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=mask, pixel_values=x)
        pooled = lambda f: getattr(f, "pooler_output", f)  # transformers 5 returns the projected pooler output
        text_embeds = pooled(m.get_text_features(input_ids=ids, attention_mask=mask))
        image_embeds = pooled(m.get_image_features(pixel_values=x))
        interpolated = pooled(m.get_image_features(pixel_values=x2, interpolate_pos_encoding=True))
        zs = m(input_ids=torch.tensor([e.ids for e in penc]), attention_mask=torch.tensor([e.attention_mask for e in penc]),
               pixel_values=pixel_values)
    write("clip_tiny", {
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "tensors": listing, "sentences": SENTENCES,
        "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
        "input": x_entry, "input_48x40": x2_entry,
        "text_embeds": flat(text_embeds), "image_embeds": flat(image_embeds),
        "vision_last_hidden_state_shape": list(out.vision_model_output.last_hidden_state.shape),
        "vision_last_hidden_state": flat(out.vision_model_output.last_hidden_state),
        "image_embeds_48x40": flat(interpolated),
        "logits_per_image": flat(out.logits_per_image),
        "zero_shot": {"labels": ZERO_SHOT_LABELS, "template": ZERO_SHOT_TEMPLATE,
                      "images": [{"name": "image0", "height": 40, "width": 56}, {"name": "image1", "height": 60, "width": 36}],
                      "pixel_values": flat(pixel_values),
                      "probabilities": flat(zs.logits_per_image.softmax(-1))}})


def rule_open_clip(name, shape):
    if "ln_" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)
    if name == "logit_scale":
        return 2.6592, 0.0
    if name.endswith("bias"):
        return 0.0, 0.05
    if "embedding" in name:
        return 0.0, 0.5
    if name in ("visual.proj", "text_projection"):
        return 0.0, float(np.sqrt(3.0 / shape[0]))
    fan_in = int(np.prod(shape[1:]))
    return 0.0, float(np.sqrt(3.0 / fan_in))


def open_clip_golden():
    import open_clip
    from open_clip.model import CLIP
    vision = dict(image_size=32, layers=2, width=32, patch_size=8, head_width=8)
    text = dict(context_length=16, vocab_size=341, width=32, heads=4, layers=2)
    m = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
    folder = os.path.join(HERE, "open_clip_tiny")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": {"embed_dim": 16, "quick_gelu": True, "vision_cfg": vision, "text_cfg": text},
                   "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                      "std": [0.26862954, 0.26130258, 0.27577711]}}, f, indent=2)
        f.write("\n")
    listing = fill(m, rule_open_clip)
    clip = json.load(open(os.path.join(HERE, "golden_clip_tiny.json")))
    ids = []
    for row, mask in zip(clip["input_ids"], clip["attention_mask"]):
        n = sum(mask)
        ids.append([340 if i == n - 1 else t for i, t in enumerate(row[:n])] + [0] * (text["context_length"] - n))
    x, x_entry = tensor("input", [2, 3, 32, 32], 0.0, 1.0)
    with torch.no_grad():
        t = m.encode_text(torch.tensor(ids))
        i = m.encode_image(x)
    write("open_clip_tiny", {"reference": f"open_clip {open_clip.__version__}, torch {torch.__version__}",
                             "tensors": listing, "input_ids": ids, "input": x_entry,
                             "text_embeds": flat(t), "image_embeds": flat(i)})


def rule_whisper(name, shape):
    """Weights that make greedy decoding wander rather than repeat one token (with the output
    tied to the token embedding, a token's own row wins unless positions outweigh it): small
    token embeddings, positions of unit scale."""
    if "layer_norm" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.01)
    if name.endswith("bias"):
        return 0.0, 0.01
    if "embed_tokens" in name:
        return 0.0, 0.1
    if "embed" in name:
        return 0.0, 1.0
    return 0.0, float(np.sqrt(3.0 / int(np.prod(shape[1:]))))


WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


def whisper_tokenizer(folder):
    """A byte-level BPE in the layout of openai/whisper-tiny's tokenizer.json (GPT-2's, with
    Whisper's special tokens after the vocabulary)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CLIP_CORPUS, trainer)
    tok.add_special_tokens(WHISPER_SPECIALS)
    tok.save(os.path.join(folder, "tokenizer.json"))
    return tok


def formula_wave(name, n):
    """16-bit samples from the formula (a WAV file holds them exactly): u * 0.3 * 32767."""
    return (formula_values(name, n) * np.float32(0.3 * 32767)).astype(np.int16)


def whisper_golden():
    import wave
    import transformers
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    folder = os.path.join(HERE, "whisper_tiny")
    os.makedirs(folder, exist_ok=True)
    tok = whisper_tokenizer(folder)
    ids = {t: tok.token_to_id(t) for t in WHISPER_SPECIALS}
    # Whisper's 1501 timestamp tokens (<|0.00|> to <|30.00|>) follow <|notimestamps|>; the model
    # has their ids, as the real ones do.
    sizes = dict(vocab_size=tok.get_vocab_size() + 1501, num_mel_bins=8, d_model=16, encoder_layers=2,
                 encoder_attention_heads=2, decoder_layers=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                 decoder_ffn_dim=32, max_source_positions=1500, max_target_positions=24)
    eos, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(**sizes, decoder_start_token_id=sot, eos_token_id=eos, pad_token_id=eos, bos_token_id=eos)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper", **sizes,
                   "activation_function": "gelu", "scale_embedding": False, "decoder_start_token_id": sot,
                   "eos_token_id": eos}, f, indent=2)
        f.write("\n")
    generation = {"decoder_start_token_id": sot, "eos_token_id": eos, "pad_token_id": eos, "bos_token_id": eos,
                  "no_timestamps_token_id": ids["<|notimestamps|>"], "max_initial_timestamp_index": 50,
                  "is_multilingual": True, "lang_to_id": {"<|en|>": ids["<|en|>"]},
                  "task_to_id": {"transcribe": ids["<|transcribe|>"]}, "max_length": 24,
                  "suppress_tokens": [], "begin_suppress_tokens": []}
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
        f.write("\n")
    m = WhisperForConditionalGeneration(config).eval()
    m.generation_config = transformers.GenerationConfig(**generation)
    listing = []
    for name, t in m.named_parameters():  # tied weights once
        offset, scale = rule_whisper(name, list(t.shape))
        values, entry = tensor(name, list(t.shape), offset, scale)
        with torch.no_grad():
            t.copy_(values)
        listing.append(entry)
    # The front end and the whole transcription, from a WAV file's samples.
    samples = formula_wave("speech", 24000)  # 1.5 s at 16 kHz
    with wave.open(os.path.join(folder, "speech.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    audio = samples.astype(np.float32) / np.float32(32768.0)
    fe = WhisperFeatureExtractor(feature_size=8, sampling_rate=16000)
    features = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
    start = [sot, ids["<|en|>"], ids["<|transcribe|>"], ids["<|notimestamps|>"]]
    with torch.no_grad():
        enc = m.model.encoder(features).last_hidden_state
        logits = m(input_features=features, decoder_input_ids=torch.tensor([start])).logits
        out = list(start)
        while len(out) < 24:
            nxt = int(m(input_features=features, decoder_input_ids=torch.tensor([out])).logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
        # Beam search as transformers' GenerationMixin does it (Whisper's own generate wraps it
        # in long-form logic); no suppressed tokens, length penalty 1, no early stopping.
        beams = {}
        for n in (3, 5):
            found = transformers.GenerationMixin.generate(
                m, input_features=features, decoder_input_ids=torch.tensor([start]), num_beams=n,
                max_length=24, do_sample=False, length_penalty=1.0, early_stopping=False)
            beams[str(n)] = found[0].tolist()[len(start):]
            if beams[str(n)] and beams[str(n)][-1] == eos:
                beams[str(n)].pop()
        # Timestamps, one window: transformers' Whisper generate (its timestamp rules).
        stamped = m.generate(input_features=features, language="en", task="transcribe", return_timestamps=True)
        stamped = stamped[0].tolist()
        # Long-form: 45 s, features of the whole recording, 30 s windows moved by the timestamps.
        long_audio = formula_wave("long", 45 * 16000).astype(np.float32) / np.float32(32768.0)
        long_in = fe(long_audio, sampling_rate=16000, return_tensors="pt", truncation=False, padding="longest",
                     return_attention_mask=True)
        found = m.generate(input_features=long_in.input_features, attention_mask=long_in.attention_mask,
                           language="en", task="transcribe", return_timestamps=True, return_segments=True)
        segments = [{"start": float(x["start"]), "end": float(x["end"]), "tokens": x["tokens"].tolist()}
                    for x in found["segments"][0]]
    text = tok.decode(out, skip_special_tokens=True)
    write("whisper_tiny", {"reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
                           "tensors": listing, "start": start, "eos": eos,
                           "features_first_300": flat(features[:, :, :300]), "features_max": float(features.max()),
                           "encoder_first_64": flat(enc[:, :64]), "logits_start": flat(logits),
                           "greedy_ids": out[len(start):], "beam_ids": beams, "text": text,
                           "timestamp_ids": stamped, "long_frames": int(long_in.input_features.shape[-1]),
                           "long_features_first_300": flat(long_in.input_features[:, :, :300]),
                           "long_segments": segments})


def rule_vit(name, shape):
    if "ln" in name or "layernorm" in name:
        return (1.0, 0.1) if name.endswith("weight") else (0.0, 0.05)
    if name.endswith("bias"):
        return 0.0, 0.05
    if "token" in name or "pos_embedding" in name or "position_embeddings" in name:
        return 0.0, 0.5
    fan_in = int(np.prod(shape[1:]))
    return 0.0, float(np.sqrt(3.0 / fan_in))


def vit_golden():
    import torchvision
    import transformers
    from transformers import ViTConfig, ViTModel
    x, x_entry = tensor("input", [2, 3, 32, 32], 0.0, 1.0)
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                              hidden_dim=32, mlp_dim=64).eval()
    listing = fill(tv, rule_vit)
    tv.heads = torch.nn.Identity()
    with torch.no_grad():
        y = tv(x)
    write("vit_torchvision", {"reference": f"torchvision {torchvision.__version__}, torch {torch.__version__}",
                              "tensors": listing, "input": x_entry, "output_shape": list(y.shape), "output": flat(y)})
    folder = os.path.join(HERE, "vit_tiny")
    os.makedirs(folder, exist_ok=True)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["ViTModel"], "model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
                   "layer_norm_eps": config.layer_norm_eps, "image_size": 32, "patch_size": 8, "num_channels": 3,
                   "qkv_bias": True}, f, indent=2)
        f.write("\n")
    m = ViTModel(config).eval()
    listing = fill(m, rule_vit)
    x2, x2_entry = tensor("input_48x40", [1, 3, 48, 40], 0.0, 1.0)
    with torch.no_grad():
        out = m(pixel_values=x)
        interpolated = m(pixel_values=x2, interpolate_pos_encoding=True).last_hidden_state[:, 0]
    write("vit_hf", {"reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
                     "tensors": listing, "input": x_entry, "input_48x40": x2_entry,
                     "last_hidden_state_shape": list(out.last_hidden_state.shape),
                     "last_hidden_state": flat(out.last_hidden_state),
                     "class_token_48x40": flat(interpolated)})


def real(data):
    """Reference outputs of the real weights in data/NAME/, on the formula input (images) and
    the sentences (BERT), into data/NAME/reference.json."""
    import torchvision
    from safetensors.torch import load_file
    x, x_entry = tensor("input", [2, 3, 224, 224], 0.0, 1.0)
    for name in ["resnet18", "resnet50"]:
        path = os.path.join(data, name, "model.safetensors")
        if not os.path.exists(path):
            print(f"{path} missing: skipped")
            continue
        m = getattr(torchvision.models, name)(weights=None).eval()
        sd = load_file(path)
        m.load_state_dict({k: v for k, v in sd.items() if k in m.state_dict()}, strict=False)
        m.fc = torch.nn.Identity()
        with torch.no_grad():
            y = m(x)
        with open(os.path.join(data, name, "reference.json"), "w") as f:
            json.dump({"reference": f"torchvision {torchvision.__version__}", "input": x_entry,
                       "output_shape": list(y.shape), "output": flat(y)}, f)
        print(f"wrote {name}/reference.json")
    folder = os.path.join(data, "bert-base-uncased")
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        import transformers
        from transformers import BertModel, BertTokenizerFast
        m = BertModel.from_pretrained(folder).eval()
        tok = BertTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
        enc = tok(SENTENCES, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = m(**enc)
        with open(os.path.join(folder, "reference.json"), "w") as f:
            json.dump({"reference": f"transformers {transformers.__version__}", "sentences": SENTENCES,
                       "input_ids": enc["input_ids"].tolist(),
                       "last_hidden_state_shape": list(out.last_hidden_state.shape),
                       "last_hidden_state": flat(out.last_hidden_state), "pooler_output": flat(out.pooler_output)}, f)
        print("wrote bert-base-uncased/reference.json")
    for name in ["clip-vit-base-patch32", "clip-vit-base-patch16"]:
        folder = os.path.join(data, name)
        if not os.path.exists(os.path.join(folder, "model.safetensors")):
            print(f"{folder} missing: skipped")
            continue
        import transformers
        from tokenizers import Tokenizer
        from transformers import CLIPModel
        m = CLIPModel.from_pretrained(folder).eval()
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        eos = tok.token_to_id("<|endoftext|>")
        tok.enable_padding(pad_id=eos, pad_token="<|endoftext|>")
        enc = tok.encode_batch(SENTENCES)
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        pooled = lambda f: getattr(f, "pooler_output", f)  # noqa: E731
        with torch.no_grad():
            text = pooled(m.get_text_features(input_ids=ids, attention_mask=mask))
            image = pooled(m.get_image_features(pixel_values=x))
        with open(os.path.join(folder, "reference.json"), "w") as f:
            json.dump({"reference": f"transformers {transformers.__version__}", "sentences": SENTENCES,
                       "input_ids": ids.tolist(), "input": x_entry,
                       "text_embeds": flat(text), "image_embeds": flat(image)}, f)
        print(f"wrote {name}/reference.json")


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) == 3 and sys.argv[1] == "--real":
        real(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--only":
        {"image": image_golden, "bert_tiny": bert_golden, "clip_tiny": clip_golden, "vit": vit_golden,
         "open_clip_tiny": open_clip_golden, "whisper_tiny": whisper_golden}[sys.argv[2]]()
    else:
        image_golden()
        bert_golden()
        clip_golden()
        vit_golden()
        open_clip_golden()
        whisper_golden()
