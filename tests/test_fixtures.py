"""The tiny .tflite models in tests/fixtures/, regenerated with TensorFlow and compared.

The till's tests build their bundles from these committed flatbuffers (tests/bundle_factory.py),
so they run without TensorFlow. This test converts the same models now and checks that the
committed ones, with their weights replaced as the factory does, answer as the fresh ones do.
To refresh the fixtures after a TensorFlow upgrade: ``python tests/test_fixtures.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bundle_factory import (FIXTURE_SIZES, FIXTURES, SENTINEL_BIAS, SENTINEL_WEIGHT, convert_dense,
                            convert_failing, dense_tflite)

pytestmark = pytest.mark.slow  # loads TensorFlow


def _answers(model: bytes, faces: np.ndarray) -> np.ndarray:
    from agegate.edge.age_model import interpreter_class

    interpreter = interpreter_class()[0](model_content=model)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    got = []
    for face in faces:
        interpreter.set_tensor(inp["index"], face[None].astype(np.float32))
        interpreter.invoke()
        got.append(float(interpreter.get_tensor(out["index"]).ravel()[0]))
    return np.array(got)


@pytest.mark.parametrize("size", FIXTURE_SIZES)
@pytest.mark.parametrize("weight, bias", [(0.0, 16.0), (0.0, 40.0), (1 / 3, 0.0), (2.5, -3.0)])
def test_committed_dense_models_answer_as_freshly_converted_ones(size, weight, bias):
    faces = np.random.default_rng(size).random((5, size, size, 3), dtype=np.float32)
    expected = _answers(convert_dense(size, weight, bias), faces)
    np.testing.assert_allclose(_answers(dense_tflite(size, weight, bias), faces), expected, rtol=1e-5, atol=1e-4)


def test_committed_failing_model_fails_as_a_fresh_one_does():
    black, bright = np.zeros((1, 32, 32, 3), np.float32), np.full((1, 32, 32, 3), 0.5, np.float32)
    for model in ((FIXTURES / "failing-32.tflite").read_bytes(), convert_failing()):
        assert _answers(model, black).tolist() == [20.0]
        with pytest.raises(Exception):
            _answers(model, bright)


if __name__ == "__main__":  # rewrite the fixtures with this machine's TensorFlow
    for size in FIXTURE_SIZES:
        (FIXTURES / f"dense-{size}.tflite").write_bytes(convert_dense(size, SENTINEL_WEIGHT, SENTINEL_BIAS))
    (FIXTURES / "failing-32.tflite").write_bytes(convert_failing())
