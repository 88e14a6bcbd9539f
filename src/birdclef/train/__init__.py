"""Training: losses, the LightningModule, per-fold callbacks and the k-fold driver.

``birdclef.models`` never imports this package, so inference code can ship without it. Import the
submodules directly (``from birdclef.train.losses import create_loss``); nothing is re-exported here
so that importing one part does not pull in Lightning.
"""
