"""CNN image encoders (torchvision VGG-16, ResNet-50) as the image tower of an open_clip model.

The published OrdinalCLIP/CoOp MORPH rows pair an ImageNet or IMDB-WIKI VGG-16 with CLIP's text
encoder. `CNNTower` stands where open_clip's `model.visual` stood: it has `output_dim`,
`preprocess_cfg` and `forward(images) -> [B, D]`, so `CLIP.encode_image` (which calls
`self.visual(image)`) and everything above it run unchanged.

- VGG-16: `features`, `avgpool` and `classifier` up to fc7's ReLU (4096-d, the DEX/IMDB-WIKI
  feature); the 1000-way layer is dropped, its dropout is active in train mode only, as torchvision's.
- ResNet-50: everything up to the global average pool (2048-d); `fc` is dropped.

A new bias-free linear projection maps that feature to the text embedding width. It starts random,
drawn from the caller's RNG (the global one, or `generator`). Weights come from a torchvision-layout
state dict (`load_torchvision_state`): a `module.` prefix and the unused last classifier layer are
tolerated, anything else that does not match is a one-line error naming the file and the key.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from numclip.core.errors import NumclipError

FEATURE_WIDTH = {"vgg16": 4096, "resnet50": 2048}
DROPPED_PREFIX = {"vgg16": "classifier.6.", "resnet50": "fc."}  # the classifier the tower does not use
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights (their transforms())
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION = "bilinear"  # what torchvision's VGG16/ResNet50 IMAGENET1K weights resize with


def _trunk(name: str) -> nn.Module:
    """The torchvision network with its last classifier layer removed (random init, no download)."""
    import torchvision

    if name == "vgg16":
        net = torchvision.models.vgg16(weights=None)
        net.classifier = net.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU; keys stay classifier.0/.3
    elif name == "resnet50":
        net = torchvision.models.resnet50(weights=None)
        net.fc = nn.Identity()
    else:
        raise ValueError(f"unknown CNN image encoder {name!r}")
    return net


class CNNTower(nn.Module):
    """A torchvision CNN + a linear projection, shaped like an open_clip visual tower."""

    def __init__(self, name: str, output_dim: int, image_size: Any = 224,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.name = name
        self.trunk = _trunk(name)
        self.width = FEATURE_WIDTH[name]
        self.output_dim = int(output_dim)
        self.proj = nn.Linear(self.width, self.output_dim, bias=False)
        with torch.no_grad():  # CLIP's own projections: N(0, width^-1/2)
            self.proj.weight.normal_(0.0, self.width ** -0.5, generator=generator)
        self.image_size = image_size
        self.preprocess_cfg: dict[str, Any] = {
            "size": image_size, "mode": "RGB", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "interpolation": INTERPOLATION, "resize_mode": "shortest", "fill_color": 0}
        self.image_mean, self.image_std = IMAGENET_MEAN, IMAGENET_STD  # open_clip's legacy attributes

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The CNN's own feature [B, width] (fc7 after ReLU, or the pooled ResNet feature)."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(images))


def load_torchvision_state(tower: CNNTower, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision-layout state dict of the tower's CNN, strictly, but for a `module.` prefix
    (DataParallel) and the last classifier layer (ImageNet's 1000 classes, or DEX's 101 ages)."""
    dropped = DROPPED_PREFIX[tower.name]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    own = tower.trunk.state_dict()
    where = f"{source} is not a torchvision {tower.name} state dict"
    missing = [k for k in own if k not in state]
    if missing:
        raise NumclipError(f"{where}: missing key '{missing[0]}' ({len(missing)} missing in all)")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise NumclipError(f"{where}: unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected in all)")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise NumclipError(f"{where}: key '{key}' has shape {list(state[key].shape)} where "
                               f"{tower.name} has {list(value.shape)}")
        if state[key].is_floating_point() != value.is_floating_point():
            raise NumclipError(f"{where}: key '{key}' holds {state[key].dtype} where {tower.name} has {value.dtype}")
    tower.trunk.load_state_dict(state, strict=True)
