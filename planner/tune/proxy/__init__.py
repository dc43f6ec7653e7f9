"""The proxy: the target (model and training shape), what the short trainings run on (``--proxy``), how a target
point maps to the proxy's depth and learning rate, and one proxy training run with its memory measured."""
