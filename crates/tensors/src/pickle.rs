//! An allowlist pickle reader for the subset `torch.save` writes for a state dict.
