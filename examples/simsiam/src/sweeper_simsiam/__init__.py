"""SimSiam for sweeper, installed as the ``sweeper.methods`` entry point ``simsiam``."""

from sweeper_simsiam.method import SimSiam, SimSiamParams, simsiam_loss

__all__ = ["SimSiam", "SimSiamParams", "simsiam_loss"]
