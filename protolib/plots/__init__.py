"""Every figure of protolib, one module per subject; each public function is ``plot_<subject>`` and returns the figure.

- :mod:`~protolib.plots.style`: the page style (text sizes at page width, units, colour bars, scale
  bars, the N and E arrows, beams, corner plots' legibility); matplotlib and numpy only, so that
  every layer can use it;
- :mod:`~protolib.plots.images`: a grid of images, and one system through the instrument;
- :mod:`~protolib.plots.bank`: a bank's images ordered by a parameter, its prior, its split;
- :mod:`~protolib.plots.learning`: training histories, reconstructions, latent spaces, pairs, the
  networks' sketches;
- :mod:`~protolib.plots.gallery`: a target beside its best matches (one band or several), and their
  spectral-index maps;
- :mod:`~protolib.plots.corner`: the matches' parameters over the prior (corner plot, marginals);
- :mod:`~protolib.plots.observation`: an observation before and after preparation;
- :mod:`~protolib.plots.attribution`: attribution maps;
- :mod:`~protolib.plots.embedding_maps`: embedding maps;
- :mod:`~protolib.plots.evaluation`: coverage, recovery, rank histograms, TARP, learning curves;
- :mod:`~protolib.plots.domain_shift`: the domain-shift comparison;
- :mod:`~protolib.plots.tuning`: a hyperparameter search.

Each module sits in the lowest layer its inputs allow (``tests/test_architecture.py``), and this
package imports none of them: import a figure from its module, e.g.
``from protolib.plots.gallery import plot_gallery``.
"""
