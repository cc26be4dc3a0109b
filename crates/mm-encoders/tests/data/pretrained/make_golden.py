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
- bert_tiny: Hugging Face transformers' `BertModel` with a tiny configuration (written to
  bert_tiny/config.json) and a WordPiece `tokenizer.json` built here (bert_tiny/), on three
  sentences: the token ids and attention mask `BertTokenizerFast` gives (also truncated), then
  `last_hidden_state` and `pooler_output`.

    pip install --target DIR --no-deps torchvision==0.28.0 transformers tokenizers safetensors ...
    PYTHONPATH=<torch site>:DIR python3 make_golden.py            # writes the files beside it

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


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) == 3 and sys.argv[1] == "--real":
        real(sys.argv[2])
    else:
        image_golden()
        bert_golden()
