"""The conversion path users take today, for the benchmark: timm's own npz
loader into a full model in memory, then torch.save of its state dict."""
import sys

import timm
import torch
from timm.models.vision_transformer import _load_weights

src, dst = sys.argv[1], sys.argv[2]
# The benchmark's source has the published ViT-L/32 (384 px, 1000 classes) shapes, unless another
# registered timm name is given (timm's loader also reads big_vision SigLIP image towers, params/img/).
name = sys.argv[3] if len(sys.argv) > 3 else "vit_large_patch32_384"
model = timm.create_model(name, pretrained=False)
_load_weights(model, src)
torch.save(model.state_dict(), dst)
