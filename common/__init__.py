"""The ground floor: what every wing (search, retraining, benchmarks) may import. Command-line
plumbing (``cli``), the run folder's lock (``lock``), the device policy (``device``) and the
datasets (``datasets``, with the generated cluttered digits in ``clutter``)."""
