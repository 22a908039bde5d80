"""Milliseconds a face for each bundle given: the till's AgeModel on one thread, one face at a
time (random 64x64 crops; the cost does not depend on the pixels), best of three passes over
400 faces after a warm-up. A script for this comparison; `make bench` is the project's benchmark.

    python docs/model-card/candidate-three-2026.11.29/bundle_speed.py BUNDLE... > speed.txt
"""
import sys, time, numpy as np
from agegate.edge.age_model import AgeModel
faces = np.random.default_rng(0).integers(0, 255, (400, 64, 64, 3), dtype=np.uint8)
for path in sys.argv[1:]:
    m = AgeModel.from_dir(path, num_threads=1)
    m.predict_prepared(faces[:20])
    best = []
    for _ in range(3):
        t = time.perf_counter(); m.predict_prepared(faces); best.append(1000 * (time.perf_counter() - t) / len(faces))
    print(f"{path}: {min(best):.2f} ms/face (runs {', '.join(f'{b:.2f}' for b in best)})")
