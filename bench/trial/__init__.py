"""One trial: a network trained by one recipe on one data set, epoch by epoch.

The contract is framework-free (recipe, data files, batch plans, the epoch loop,
checkpoints, threads); a backend sub-package builds the network and runs the
epochs on its framework, behind the interface `bench.trial.loop` drives.
"""
