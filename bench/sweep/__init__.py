"""The sweep: the sweep file (`config`), what the store lacks (`plan`), the machines it
runs on (`cluster`), and the Ray Tune run (`driver`, with `tune_trial` in each trial's
process). Framework-free: no module here imports MXNet or PyTorch.
"""
