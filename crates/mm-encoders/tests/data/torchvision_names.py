"""Writes the parameter and buffer names and shapes of torchvision's ResNet-18, ResNet-50 and
VGG-11 (randomly initialised; weights=None, so no download) to torchvision_<arch>.txt, one
`name shape` per line in state_dict order, leaving out `num_batches_tracked` (a counter tch's
batch norm does not keep; mm-encoders skips it when loading).

Produced with PyTorch 2.13.0 and torchvision 0.28.0:

    PYTHONPATH=<torch site>:<torchvision site> python3 torchvision_names.py
"""
import os

import torchvision

here = os.path.dirname(os.path.abspath(__file__))
for arch in ["resnet18", "resnet50", "vgg11"]:
    model = getattr(torchvision.models, arch)(weights=None)
    with open(os.path.join(here, f"torchvision_{arch}.txt"), "w") as f:
        for name, t in model.state_dict().items():
            if not name.endswith("num_batches_tracked"):
                f.write(f"{name} {list(t.shape)}\n")
