"""The Gluon backend, the reference: the original's networks on MXNet 1.9."""
