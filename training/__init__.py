"""agegate.training: labelled face photos to a trained age model (`agegate-train`).

Read in this order:

* ``data``      -- the data folder: readers (labels.csv, UTKFace names), checks, splits
* ``faces``     -- the till's detector and ``prepare_face`` cut every training crop; cached
* ``run``       -- a run's settings (config.json), its directory, its serving manifest
* ``model``     -- backbone + pooling + regression head; loss and metric; loading for inference
* ``pipeline``  -- tf.data: shuffle, augment, batch, prefetch; replayable after a resume
* ``distribute``-- CPU, GPUs or a cluster: the strategy and precision, chosen in one place
* ``fit``       -- the training run, checkpointed every epoch and resumable
* ``metrics``   -- MAE per band and the Challenge 25 figures (shared with export)
* ``evaluate``, ``eda``, ``plots``, ``cli``
"""
