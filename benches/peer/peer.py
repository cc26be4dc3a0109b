"""The PyTorch side of `cargo xtask bench-peer`: the same workloads as mm's
benches/src/peer.rs, written the way a PyTorch user would write them.

    python3 benches/peer/peer.py --inputs target/bench-peer/work/inputs.json --threads 2 --json out.json

The inputs (PNG and WAV files and their manifests) are written by mm's `bench-peer` binary, so
both sides read the same files. Needs torch; W1 needs torchvision and pillow; W2 and W4 need
torchaudio, soundfile and numpy (`cargo xtask bench-peer --install-peer-deps` installs them
beside set-up's torch).

W1  DataLoader(num_workers=threads) over the PNG files: RandomResizedCrop(224),
    RandomHorizontalFlip, ColorJitter(0.4, 0.4, 0.4), ToTensor, Normalize; batches of 64.
W2  DataLoader over the WAV files: soundfile, torchaudio.functional.resample to 16 kHz,
    MelSpectrogram(n_fft 400, hop 160, 64 mels), log, pad_sequence; batches of 64.
W3  One training step (forward, cross-entropy, backward, AdamW, zero_grad) of
    - the seed model: ResNet-50 on 224x224 + 2-layer LSTM (hidden 256) over 20 steps of 300
      features, last hidden state, concatenation, a 10-way linear layer;
    - the av-digits model: LeNet + a 2-block audio CNN with masked padding and mean pooling +
      gated multimodal unit (64) + MLP head [64], dropout 0.1.
    Modules keep PyTorch's default initialisation, which is also libtorch's and mm's.
W4  One epoch of the av-digits recipe from its files: training (batch 64, shuffled, AdamW
    lr 2e-3), a validation pass, and a checkpoint written atomically.
W5  DataLoader over H.264 mp4 files with PyAV (av, which carries its own FFmpeg; torchvision
    0.28 no longer reads video): every frame decoded on one thread, the 16 nearest to evenly
    spaced times converted to 112x112 RGB by FFmpeg's scaler, normalised; batches of 64.
W6  CLIP ViT-B/32 image embeddings with transformers' CLIPModel.get_image_features (its
    default attention, sdpa), batch 32 of 224x224, eval mode, no gradients; needs
    transformers (installed by --install-peer-deps into its own folder).
W7  Whisper-tiny (random weights) with transformers' WhisperForConditionalGeneration: the
    encoder on a 30 s window, then 32 greedy steps with its key/value cache; real-time factor.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

BATCH = 64


def read_manifest(path, split=None):
    root = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if split is None or row.get("split", "train") == split:
                    rows.append(row)
    return root, rows


def lengths(n, lo, hi):
    """The same linear congruential draws as mm_benches::workloads::lengths."""
    state, out = 12345, []
    for _ in range(n):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(lo + ((state >> 33) % (hi - lo + 1)))
    return torch.tensor(out)


def measure(id_, what, runs, unit):
    return {"id": id_, "what": what, "value": statistics.median(runs), "unit": unit, "runs": runs}


def pad_collate(batch):
    return pad_sequence(batch, batch_first=True), torch.tensor([len(x) for x in batch])


def loader_throughput(dataset, threads, repeats, shuffle, collate=None):
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=shuffle, num_workers=threads, collate_fn=collate,
                        persistent_workers=threads > 0)
    runs = []
    for epoch in range(repeats + 1):  # the first epoch warms up (and starts the workers)
        start = time.perf_counter()
        n = sum(len(b[0]) for b in loader)
        if n != len(dataset):
            raise SystemExit(f"an epoch delivered {n} of {len(dataset)} samples")
        if epoch > 0:
            runs.append(n / (time.perf_counter() - start))
    return runs


# --- W1 -------------------------------------------------------------------------------------

def w1(manifest, threads, repeats):
    import torchvision.transforms as T
    from PIL import Image

    class Images(Dataset):
        def __init__(self):
            self.root, self.rows = read_manifest(manifest)
            self.tf = T.Compose([
                T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4),
                T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ])

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            with Image.open(os.path.join(self.root, self.rows[i]["image"])) as img:
                return self.tf(img.convert("RGB")), 0

    data = Images()
    what = f"{len(data)} PNG 256x256 -> random resized crop 224, flip, colour jitter 0.4, normalise, batches of 64"
    return measure("W1", what, loader_throughput(data, threads, repeats, shuffle=True), "samples/s")


# --- W2 -------------------------------------------------------------------------------------

def w2(manifest, threads, repeats):
    import soundfile
    import torchaudio

    class Clips(Dataset):
        def __init__(self):
            self.root, self.rows = read_manifest(manifest)
            self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=64)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            wave, rate = soundfile.read(os.path.join(self.root, self.rows[i]["audio"]), dtype="float32")
            wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, 16000)
            return torch.log(self.mel(wave) + 1e-6).T  # [frames, 64]

    data = Clips()
    what = f"{len(data)} FSDD WAV 8 kHz -> resample 16 kHz -> log-mel 64 (n_fft 400, hop 160), padded batches of 64"
    return measure("W2", what, loader_throughput(data, threads, repeats, shuffle=False, collate=pad_collate), "samples/s")


# --- W5 -------------------------------------------------------------------------------------

def w5(manifest, threads, repeats):
    import av

    frames, side = 16, 112

    class Videos(Dataset):
        def __init__(self):
            self.root, self.rows = read_manifest(manifest)
            self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            with av.open(os.path.join(self.root, self.rows[i]["video"])) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                duration = container.duration / av.time_base
                decoded = [(float(f.pts * stream.time_base), f) for f in container.decode(stream)]
            times = [(k + 0.5) * duration / frames for k in range(frames)]
            chosen = [min(decoded, key=lambda tf: abs(tf[0] - t))[1] for t in times]
            rgb = [f.to_ndarray(format="rgb24", width=side, height=side) for f in chosen]
            clip = torch.from_numpy(__import__("numpy").stack(rgb)).permute(0, 3, 1, 2).float() / 255
            return (clip - self.mean) / self.std, 0

    data = Videos()
    what = f"{len(data)} H.264 mp4 320x240 25 fps 4 s -> {frames} frames evenly, {side}x{side}, normalised, batches of 64"
    return measure("W5", what, loader_throughput(data, threads, repeats, shuffle=False), "clips/s")


# --- models ---------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision's resnet50 without its classifier, keeping PyTorch's default initialisation."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, inplanes = [], 64
        for i, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(inplanes, planes, 2 if i > 0 and b == 0 else 1))
                inplanes = planes * 4
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(x), 1), 1)


class SeedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = ResNet50()
        self.lstm = nn.LSTM(300, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(2048 + 256, 10)

    def forward(self, image, seq, lens):
        _, (h, _) = self.lstm(seq)
        return self.head(torch.cat([self.image(image), h[-1]], 1))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.adaptive_avg_pool2d(F.max_pool2d(F.relu(self.conv2(x)), 2), 5).flatten(1)
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class AudioCnn(nn.Module):
    """3x3 convolutions with 2x2 ceil-mode pooling, padding zeroed before each, a linear map of
    each step's channels x bins, mean over valid steps."""

    def __init__(self, n_mels=40, channels=(16, 32)):
        super().__init__()
        self.convs = nn.ModuleList()
        c_in = 1
        for c in channels:
            self.convs.append(nn.Conv2d(c_in, c, 3, padding=1))
            c_in = c
        bins = n_mels
        for _ in channels:
            bins = (bins + 1) // 2
        self.proj = nn.Linear(c_in * bins, c_in)

    def forward(self, x, lens):
        b, t, _ = x.shape
        h = x.unsqueeze(1)
        for conv in self.convs:
            mask = (torch.arange(t, device=x.device) < lens[:, None]).view(b, 1, t, 1).to(h.dtype)
            h = F.relu(conv(h * mask))
            h = F.max_pool2d(h * mask, 2, 2, ceil_mode=True)
            t, lens = (t + 1) // 2, torch.div(lens + 1, 2, rounding_mode="floor")
        c, m = h.shape[1], h.shape[3]
        out = F.relu(self.proj(h.permute(0, 2, 1, 3).reshape(b, t, c * m)))
        mask = (torch.arange(t, device=x.device) < lens[:, None]).unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp_min(1)


class Gated(nn.Module):
    """Gated multimodal unit (Arevalo et al. 2017) over two inputs."""

    def __init__(self, dims, dim):
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(d, dim) for d in dims)
        self.gate = nn.Linear(sum(dims), len(dims) * dim)
        self.dim = dim

    def forward(self, xs):
        z = torch.softmax(self.gate(torch.cat(xs, 1)).view(xs[0].shape[0], len(xs), self.dim), 1)
        h = torch.stack([torch.tanh(l(x)) for l, x in zip(self.hidden, xs)], 1)
        return (z * h).sum(1)


class AvDigitsModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = LeNet()
        self.audio = AudioCnn()
        self.fusion = Gated([84, 32], 64)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))

    def forward(self, image, mels, lens):
        return self.head(self.fusion([self.image(image), self.audio(mels, lens)]))


# --- W3 -------------------------------------------------------------------------------------

def w3(repeats, seed_batch):
    out = []
    for id_, model, batch, what in [
        ("W3-seed", SeedModel(), seed_batch,
         f"training step, ResNet-50 224x224 + 2-layer LSTM (20 x 300) + concat + 10-way, batch {seed_batch}"),
        ("W3-av", AvDigitsModel(), BATCH, f"training step, av-digits model (LeNet + audio CNN + gated fusion), batch {BATCH}"),
        ("W3-av-1", AvDigitsModel(), 1, "training step, av-digits model, batch 1 (fixed cost per step: framework overhead)"),
    ]:
        torch.manual_seed(0)
        if id_ == "W3-seed":
            inputs = (torch.randn(batch, 3, 224, 224), torch.randn(batch, 20, 300), torch.full((batch,), 20))
        else:
            inputs = (torch.randn(batch, 3, 28, 28), torch.randn(batch, 120, 40), lengths(batch, 40, 120))
        timed = max(repeats, 20) if batch == 1 else repeats  # a step at batch 1 is short: more of them
        labels = torch.randint(10, (batch,))
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

        def step():
            loss = F.cross_entropy(model(*inputs), labels)
            loss.backward()
            opt.step()
            opt.zero_grad()

        for _ in range(2):
            step()
        runs = []
        for _ in range(timed):
            start = time.perf_counter()
            step()
            runs.append((time.perf_counter() - start) * 1e3)
        out.append(measure(id_, what, runs, "ms/step"))
    return out


# --- W4 -------------------------------------------------------------------------------------

def w4(manifest, threads):
    import numpy as np
    import soundfile
    import torchaudio
    from PIL import Image

    class AvDigits(Dataset):
        def __init__(self, split):
            self.root, self.rows = read_manifest(manifest, split)
            self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=8000, n_fft=256, hop_length=80, n_mels=40)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            row = self.rows[i]
            with Image.open(os.path.join(self.root, row["image"])) as img:
                image = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            image = (image - 0.5) / 0.25
            wave, _ = soundfile.read(os.path.join(self.root, row["audio"]), dtype="float32")
            mels = torch.log(self.mel(torch.from_numpy(wave)) + 1e-6).T[:120]
            mels = (mels + 5.0) / 4.0
            return image, mels, int(row["label"])

    def collate(batch):
        images, mels, labels = zip(*batch)
        return torch.stack(images), pad_sequence(mels, batch_first=True), torch.tensor([len(m) for m in mels]), torch.tensor(labels)

    train, val = AvDigits("train"), AvDigits("val")
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(2):
            torch.manual_seed(0)
            start = time.perf_counter()
            model = AvDigitsModel()
            opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
            model.train()
            for image, mels, lens, labels in DataLoader(train, BATCH, shuffle=True, drop_last=True, num_workers=threads, collate_fn=collate):
                loss = F.cross_entropy(model(image, mels, lens), labels)
                loss.backward()
                opt.step()
                opt.zero_grad()
                loss.item()  # the running loss a training loop reports
            model.eval()
            correct = 0
            with torch.no_grad():
                for image, mels, lens, labels in DataLoader(val, BATCH, num_workers=threads, collate_fn=collate):
                    correct += (model(image, mels, lens).argmax(1) == labels).sum().item()
            path = os.path.join(scratch, "last.pt")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path + ".tmp")
            os.replace(path + ".tmp", path)
            runs.append(time.perf_counter() - start)
    what = f"one epoch of the av-digits recipe: {len(train)} training + {len(val)} validation samples from PNG/WAV, checkpoint"
    return measure("W4", what, runs, "s/epoch")


# --- W6 -------------------------------------------------------------------------------------

def w6(batch, repeats):
    """CLIP ViT-B/32 image embeddings with transformers (its default configuration, which is
    openai/clip-vit-base-patch32's; random weights: the time does not depend on them), eval
    mode, no gradients; the attention implementation is transformers' default (sdpa)."""
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError as e:
        # Peer packages installed before W6 existed: the other rows still run.
        print(f"W6 skipped: it needs transformers ({e}); run `cargo xtask bench-peer --install-peer-deps` once",
              file=sys.stderr, flush=True)
        return None
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    x = torch.randn(batch, 3, 224, 224)
    runs = []
    with torch.no_grad():
        for i in range(2 + max(repeats, 3)):
            start = time.perf_counter()
            model.get_image_features(pixel_values=x)
            if i >= 2:
                runs.append(batch / (time.perf_counter() - start))
    what = f"CLIP ViT-B/32 image embeddings (vision tower and projection), 224x224, batch {batch}, no gradients"
    return measure("W6", what, runs, "images/s")


# --- W7 -------------------------------------------------------------------------------------

def w7(repeats, tokens=32):
    """Whisper-tiny (openai/whisper-tiny's sizes, random weights) on one 30 s window: the
    encoder, then `tokens` greedy steps after the 4 start tokens with transformers' key/value
    cache; seconds over 30 (real-time factor)."""
    try:
        from transformers import WhisperConfig, WhisperForConditionalGeneration
    except ImportError as e:
        print(f"W7 skipped: it needs transformers ({e}); run `cargo xtask bench-peer --install-peer-deps` once",
              file=sys.stderr, flush=True)
        return None
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6,
                           decoder_layers=4, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536)
    model = WhisperForConditionalGeneration(config).eval()
    mel = torch.randn(1, 80, 3000)
    start = torch.tensor([[50258, 50259, 50359, 50363]])

    def run():
        enc = model.model.encoder(mel)
        out = model(encoder_outputs=enc, decoder_input_ids=start, use_cache=True)
        cache, ids = out.cache if hasattr(out, "cache") else out.past_key_values, []
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(tokens):
            ids.append(int(nxt))
            if len(ids) == tokens:
                break
            out = model(encoder_outputs=enc, decoder_input_ids=nxt, cache=cache, use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        assert len(ids) == tokens

    runs = []
    with torch.no_grad():
        for i in range(1 + max(repeats, 3)):
            t = time.perf_counter()
            run()
            if i >= 1:
                runs.append((time.perf_counter() - t) / 30.0)
    what = (f"Whisper-tiny on a 30 s window: encoder, then {tokens} tokens decoded greedily with a key/value cache "
            "(real-time factor)")
    return measure("W7", what, runs, "x real time")


def versions():
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ["torchvision", "torchaudio", "transformers"]:
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", required=True, help="inputs.json written by mm's bench-peer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed-batch", type=int, default=8)
    ap.add_argument("--clip-batch", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated workloads (W1,W2,W3,W4,W5,W6,W7)")
    ap.add_argument("--json", required=True, help="where to write the results")
    args = ap.parse_args()
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    wanted = lambda w: not only or w in only  # noqa: E731
    torch.set_num_threads(args.threads)
    with open(args.inputs) as f:
        inputs = json.load(f)
    measures = []

    def report(m):
        print(f"pytorch {m['id']}: {m['value']:.2f} {m['unit']} ({m['what']})", file=sys.stderr, flush=True)
        measures.append(m)

    if wanted("W1"):
        report(w1(inputs["images"], args.threads, args.repeats))
    if wanted("W2") and inputs.get("clips"):
        report(w2(inputs["clips"], args.threads, args.repeats))
    if wanted("W3"):
        for m in w3(args.repeats, args.seed_batch):
            report(m)
    if wanted("W4") and inputs.get("av_digits"):
        report(w4(inputs["av_digits"], args.threads))
    if wanted("W5") and inputs.get("videos"):
        report(w5(inputs["videos"], args.threads, args.repeats))
    if wanted("W6"):
        m = w6(args.clip_batch, args.repeats)
        if m is not None:
            report(m)
    if wanted("W7"):
        m = w7(args.repeats)
        if m is not None:
            report(m)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"versions": versions(), "threads": args.threads, "measures": measures}, f, indent=2)
    os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
