"""The PyTorch backend: the Gluon backend's networks, recipe and semantics on any device
PyTorch supports (Hopper and Blackwell GPUs among them, which MXNet 1.9 cannot use)."""
