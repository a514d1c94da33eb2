//! Two-tower (SigLIP) targets (in progress).
