"""`python -m bench.benchmark`: how fast a trial trains, and where the time goes.

For each model x attention on the current device it prints:
- data:     images/s of the on-device data pipeline alone (gather, crop, flip, normalise);
- trial:    images/s of the whole training step (data + forward + backward + update);
- original: images/s of the same model trained through a Gluon DataLoader with
            per-image transforms in worker processes, as the original script did;
- ratios:   data / trial (headroom of the pipeline), trial / original, and each
            attention's speed as a share of the vanilla network's;
- epochs:   seconds of a whole epoch (training pass and evaluation) of a trial
            against the original script's loop.
All are measured on the same data, the training rates in alternating rounds, each
ratio the median of per-round ratios, so that a slow spell of the machine hits all
alike; with both backends the torch rows run in a process of their own
(bench.benchmark.child says why), their rounds still taking turns with Gluon's.
--kernels-compare adds the attentions built with MXNet's operators instead of the
fused kernels; --threads-compare adds child processes at MXNet's default thread
count.
"""
