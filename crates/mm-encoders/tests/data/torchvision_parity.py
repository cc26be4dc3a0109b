"""Writes parity_<arch>.safetensors for the opt-in test `image_encoders_match_torchvision_numerically`:
a randomly initialised torchvision ResNet-18, ResNet-50 and VGG-11 (weights=None, no download),
run in training mode on noise so that the batch-norm statistics are not the initial ones, then
in evaluation mode without the classifier head on a fixed input; the state dict plus
`parity.input` and `parity.output` go into one file per architecture.

    pip install --target DIR safetensors   # beside torch 2.13.0 and torchvision 0.28.0
    PYTHONPATH=<torch site>:<torchvision site>:DIR python3 torchvision_parity.py OUT_DIR
    MM_TORCHVISION_PARITY=OUT_DIR cargo test -p mm-encoders --test it torchvision
"""
import sys, torch, torchvision
from safetensors.torch import save_file
out = sys.argv[1] if len(sys.argv) > 1 else "."
torch.manual_seed(0)
for arch in ["resnet18", "resnet50", "vgg11"]:
    m = getattr(torchvision.models, arch)(weights=None)
    # Non-trivial batch-norm statistics, as a trained network has.
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(4, 3, 64, 64) * 2 + 0.5)
    m.eval()
    if arch.startswith("resnet"):
        m.fc = torch.nn.Identity()
    else:
        m.classifier[6] = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = m(x)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    sd["parity.input"] = x
    sd["parity.output"] = y
    save_file(sd, f"{out}/parity_{arch}.safetensors")
    print(arch, y.shape, float(y.abs().mean()))
