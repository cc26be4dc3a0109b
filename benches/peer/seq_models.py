"""PyTorch peer of benches/benches/seq_models.rs: the same models, sizes, lengths and work.

Forward (training mode) and backward time at batch 64, 100 steps, 64 features, lengths 50..100
from the same linear congruential sequence as the Rust benchmark. LSTM and GRU run on packed
sequences (pack_padded_sequence, enforce_sorted=False), the Transformer encoder with a
key-padding mask, the TCN with zeroed padding before each convolution, as mm-seq does.

    python3 benches/peer/seq_models.py --threads 2
"""
import argparse
import time

import torch
from torch import nn

B, T, F = 64, 100, 64


def lengths():
    state, out = 12345, []
    for _ in range(B):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(50 + ((state >> 33) % 51))
    return torch.tensor(out)


def masked_mean(out, mask):
    m = mask.unsqueeze(-1).to(out.dtype)
    return (out * m).sum(1) / m.sum(1).clamp_min(1)


class Rnn(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(F, 128, batch_first=True)

    def forward(self, x, lens, mask):
        packed = nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
        return masked_mean(out, mask)


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(64, 4, 256, 0.1, activation="gelu", batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(64), enable_nested_tensor=False)

    def forward(self, x, lens, mask):
        pos = torch.arange(T).unsqueeze(1)
        i = torch.arange(64)
        freq = torch.exp((i // 2 * 2).float() / 64 * -torch.log(torch.tensor(10000.0)))
        angle = pos * freq
        pe = torch.where(i % 2 == 0, angle.sin(), angle.cos())
        out = self.enc(nn.functional.dropout(x + pe, 0.1, self.training), src_key_padding_mask=~mask)
        return masked_mean(out * mask.unsqueeze(-1), mask)


class Tcn(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.skip = nn.Conv1d(F, 128, 1)
        for i in range(3):
            self.convs.append(nn.Conv1d(F if i == 0 else 128, 128, 3, dilation=2**i))
            self.norms.append(nn.LayerNorm(128))

    def forward(self, x, lens, mask):
        m = mask.unsqueeze(-1).to(x.dtype)
        x = x * m
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            pad = 2**i
            h = conv(nn.functional.pad(x.transpose(1, 2), (pad, pad))).transpose(1, 2)
            h = nn.functional.dropout(torch.relu(norm(h)), 0.1, self.training)
            res = self.skip(x.transpose(1, 2)).transpose(1, 2) if i == 0 else x
            x = (h + res) * m
        return masked_mean(x, mask)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(B, T, F)
    lens = lengths()
    mask = torch.arange(T).unsqueeze(0) < lens.unsqueeze(1)
    for name, model in [("lstm", Rnn(nn.LSTM)), ("gru", Rnn(nn.GRU)), ("transformer", Transformer()), ("tcn", Tcn())]:
        model.train()
        for _ in range(3):
            model(x, lens, mask).sum().backward()
        times = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            model(x, lens, mask).sum().backward()
            times.append(time.perf_counter() - t0)
        times.sort()
        print(f"{name:12s} median {1000 * times[len(times) // 2]:8.2f} ms  min {1000 * times[0]:8.2f} ms")


if __name__ == "__main__":
    main()
