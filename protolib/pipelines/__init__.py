"""The pipelines layer: the only place that composes stages, reads configuration sections and writes a run's products.

Each module is one stage a user runs, as ``protolib <command>`` or from a notebook:

- :mod:`~protolib.pipelines.simulate`: a configuration's bank, simulated once;
- :mod:`~protolib.pipelines.train`: a configuration's autoencoder and Siamese network, trained once;
- :mod:`~protolib.pipelines.match`: one target against a bank, with its report;
- :mod:`~protolib.pipelines.evaluate`: every method on the held-out systems;
- :mod:`~protolib.pipelines.shift`: the domain-shift comparison (fixed against drawn nuisance physics);
- :mod:`~protolib.pipelines.tune`: the hyperparameter search;
- :mod:`~protolib.pipelines.understand`: attribution maps and embedding maps.

Library modules below this layer never import it (``tests/test_architecture.py`` checks the import graph).
"""
