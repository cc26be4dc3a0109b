# Produces logmel_torchaudio.txt, the golden values of mm-data's log-mel test.
# Run with torch 2.13.0 and torchaudio 2.11.1: python3 logmel_torchaudio.py > logmel_torchaudio.txt
# First line: n_mels frames; then one line per mel bin: the mel power of each frame
# (torchaudio.transforms.MelSpectrogram, sample_rate 16000, n_fft 400, hop 160, n_mels 64,
# other arguments default: periodic Hann window, center with reflect padding, power 2, HTK mel
# scale, no filter-bank normalisation), in float64.
import math

import torch
import torchaudio

n = 1600
x = torch.tensor(
    [math.sin(2 * math.pi * 440 * i / 16000) * 0.6 + math.sin(2 * math.pi * 3100 * i / 16000 + 0.3) * 0.2
     + (((i * 7919) % 101) - 50) / 500.0 for i in range(n)],
    dtype=torch.float64,
)
mel = torchaudio.transforms.MelSpectrogram(
    sample_rate=16000, n_fft=400, hop_length=160, n_mels=64
).to(torch.float64)(x)
print(mel.shape[0], mel.shape[1])
for row in mel.tolist():
    print(" ".join(f"{v:.10e}" for v in row))
