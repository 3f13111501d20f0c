"""Integrations with other training frameworks; each is an optional extra, imported explicitly.

* :mod:`mutualnet_video.integrations.lightning`: a LightningModule that trains a slimmable
  model with the sandwich rule, and a callback for BN calibration and the final table
  (``pip install -e ".[lightning]"``).

Importing this package imports none of them.
"""
