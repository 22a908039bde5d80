"""Squared distance of each run's kept model (model.keras, the kept epoch) from dlib's published
weights: what --anchor-weight K multiplies in the loss.

    cd runs && python ../docs/model-card/candidate-anchor-2026.11.29/distance.py loso-aaf-{,a1-}s{1234,2,3} \
        > ../docs/model-card/candidate-anchor-2026.11.29/distance.txt
"""
import sys

import keras
import numpy as np

from agegate.training.model import build_model
from agegate.training.run import RunDir

for path in sys.argv[1:]:
    run = RunDir(path)
    config = run.load_config()
    config.label_sigma = 0.0  # the published net as it is, without the training-only class output
    start = {w.path: keras.ops.convert_to_numpy(w.value) for w in build_model(config).weights}
    model = keras.models.load_model(run.model, compile=False)
    d = sum(float(np.sum((keras.ops.convert_to_numpy(w.value) - start[w.path]) ** 2)) for w in model.trainable_weights)
    print(f"{path}: squared distance from the published weights {d:.2f}")
