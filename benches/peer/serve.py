"""The PyTorch side of `cargo xtask bench-serve`: the av-digits model behind FastAPI on uvicorn,
written the way people put a PyTorch model behind HTTP: one request, one forward pass.

    python3 benches/peer/serve.py --port 8081 --threads 2

POST /v1/predict takes the JSON `mm serve` takes, {"image": base64 PNG, "audio": base64 WAV},
decodes the PNG with PIL and the WAV with soundfile, makes the log-mel spectrogram with
torchaudio (8 kHz, n_fft 256, hop 80, 40 mels, the recipe's), normalises, runs the model (the
same architecture as mm's av-digits recipe: benches/peer/peer.py's AvDigitsModel, eval mode,
no_grad) and answers {"prediction", "probabilities"}. GET /ready answers once the model is
built. The handler is a plain `def`, so FastAPI runs it on its thread pool, as most such
servers do.
"""
import argparse
import base64
import io
import os
import sys

import numpy as np
import soundfile
import torch
import torchaudio
import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer import AvDigitsModel  # noqa: E402

CLASSES = [str(d) for d in range(10)]


class Sample(BaseModel):
    image: str
    audio: str


def build_app():
    torch.manual_seed(0)
    model = AvDigitsModel().eval()
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=8000, n_fft=256, hop_length=80, n_mels=40)
    app = FastAPI()

    @app.get("/ready")
    def ready():
        return {"ready": True}

    @app.post("/v1/predict")
    def predict(sample: Sample):
        try:
            with Image.open(io.BytesIO(base64.b64decode(sample.image))) as img:
                image = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            wave, _ = soundfile.read(io.BytesIO(base64.b64decode(sample.audio)), dtype="float32")
        except Exception as e:  # what a client sent cannot be read
            raise HTTPException(status_code=422, detail=str(e))
        image = (image - 0.5) / 0.25
        mels = torch.log(mel(torch.from_numpy(wave)) + 1e-6).T[:120]
        mels = (mels + 5.0) / 4.0
        with torch.no_grad():
            logits = model(image[None], mels[None], torch.tensor([len(mels)]))
        p = torch.softmax(logits, 1)[0].tolist()
        best = max(range(len(p)), key=p.__getitem__)
        return {"prediction": CLASSES[best], "probabilities": dict(zip(CLASSES, p))}

    return app


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
