# Produces resample_torchaudio.txt, the golden values of mm-data's resampler test.
# Run with a Python that has torch 2.13.0 and torchaudio 2.11.1 (the newest on PyPI in 2026-11;
# its functional.resample is plain torch code): python3 resample_torchaudio.py > resample_torchaudio.txt
# Each line: from_rate to_rate output_length outputs... (float64, default resample arguments:
# sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99).
import math

import torch
import torchaudio.functional as F

n = 64
x = torch.tensor(
    [math.sin(0.37 * i) * 0.5 + math.cos(1.9 * i) * 0.3 + ((i * 7919) % 13) / 50.0 for i in range(n)],
    dtype=torch.float64,
)
for a, b in [(8000, 16000), (16000, 8000), (44100, 16000), (3, 5)]:
    y = F.resample(x, a, b)
    print(a, b, len(y), " ".join(f"{v:.9f}" for v in y.tolist()))
