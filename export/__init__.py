"""agegate.export: a trained run to model bundles the till loads (`agegate-export`).

* ``convert``  -- Keras to TFLite: float32, float16, dynamic-range, full-integer int8
* ``measure``  -- a bundle measured through the till's own AgeModel; Keras beside it
* ``exporter`` -- convert, stage, measure, accept or refuse, write bundle and report
* ``verify``   -- re-check a bundle: hash, manifest, that it runs (and its recorded MAE)
* ``cli``
"""
