"""The PyTorch version of benches/benches/data_pipeline.rs, for a same-machine comparison.

    python3 benches/peer/data_pipeline.py --workers 2 --fsdd ../shared/data/mirror/fsdd/v1.0.10.tar.gz

Needs torch, torchvision, torchaudio, pillow, numpy and soundfile. Prints samples per second of
(a) PNG 256x256 -> RandomResizedCrop(224) -> flip -> ColorJitter(0.4, 0.4, 0.4) -> ToTensor ->
Normalize, batches of 64, and (b) FSDD WAV 8 kHz -> resample to 16 kHz -> MelSpectrogram(n_fft
400, hop 160, 64 mels) -> log -> pad_sequence, batches of 64; each with a DataLoader of
--workers worker processes (the usual way to parallelise this in PyTorch).
"""
import argparse
import os
import tarfile
import tempfile
import time

import numpy as np
import soundfile
import torch
import torchaudio
import torchvision.transforms as T
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset


def write_pngs(folder, n, size):
    # The same pattern as mm_benches::write_pngs.
    y, x = np.mgrid[0:size, 0:size].astype(np.uint32)
    paths = []
    for i in range(n):
        v = x * 31 + y * 17 + i * 101
        img = np.stack([v % 251, (v // 3) % 241, (x ^ y ^ i) % 256], axis=-1).astype(np.uint8)
        p = os.path.join(folder, f"{i}.png")
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


class Images(Dataset):
    def __init__(self, paths):
        self.paths = paths
        self.tf = T.Compose([
            T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4),
            T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB")), 0


class Clips(Dataset):
    def __init__(self, paths):
        self.paths = paths
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=64)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        wave, rate = soundfile.read(self.paths[i], dtype="float32")
        wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, 16000)
        return torch.log(self.mel(wave) + 1e-6).T  # [frames, 64]


def pad(batch):
    return pad_sequence(batch, batch_first=True), torch.tensor([len(x) for x in batch])


def throughput(dataset, workers, collate=None, repeats=3):
    loader = DataLoader(dataset, batch_size=64, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0)
    for _ in loader:  # warm-up epoch (worker start-up excluded)
        pass
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = sum(len(b[0]) for b in loader)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fsdd", help="path of the FSDD v1.0.10 .tar.gz")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        paths = write_pngs(d, 256, 256)
        print(f"images: {throughput(Images(paths), args.workers):.1f} samples/s")
    if args.fsdd:
        with tempfile.TemporaryDirectory() as d:
            with tarfile.open(args.fsdd) as tar:
                members = [m for m in tar.getmembers() if m.name.endswith(".wav")][:512]
                for m in members:
                    m.name = os.path.basename(m.name)
                tar.extractall(d, members=members, filter="data")
            paths = [os.path.join(d, m.name) for m in members]
            print(f"audio: {throughput(Clips(paths), args.workers, collate=pad):.1f} samples/s")


if __name__ == "__main__":
    main()
