"""Where training runs: one function picks the tf.distribute strategy and the precision.

* ``TF_CONFIG`` naming a cluster: ``MultiWorkerMirroredStrategy`` (every worker runs the
  same command; the chief writes the run directory, the others write to a scratch folder).
* One or more GPUs: ``MirroredStrategy`` over all of them, with ``mixed_float16``.
* Otherwise the default strategy on the CPU, in float32.

The same code runs unchanged on each; only the batch size (global, split over replicas)
and the speed change.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    kind: str  # "multi_worker", "mirrored" or "default"
    mixed_precision: bool
    workers: int = 1
    gpus: int = 0
    chief: bool = True

    def describe(self) -> str:
        where = {"multi_worker": f"MultiWorkerMirroredStrategy over {self.workers} workers", "mirrored": f"MirroredStrategy over {self.gpus} GPU(s)", "default": "the default strategy on the CPU"}[self.kind]
        return f"{where}, {'mixed_float16' if self.mixed_precision else 'float32'}"


def plan(gpus: int, tf_config: str | None, mixed_precision: str = "auto") -> Plan:
    """The strategy for this machine: a pure function of the GPU count and TF_CONFIG."""
    cluster, task = {}, {}
    if tf_config:
        raw = json.loads(tf_config)
        cluster, task = raw.get("cluster") or {}, raw.get("task") or {}
    mixed = {"on": True, "off": False}.get(mixed_precision, gpus > 0)
    if cluster:
        workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
        chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
        return Plan("multi_worker", mixed, workers=workers, gpus=gpus, chief=chief)
    if gpus:
        return Plan("mirrored", mixed, gpus=gpus)
    return Plan("default", mixed)


def choose_strategy(mixed_precision: str = "auto") -> tuple[tf.distribute.Strategy, Plan]:
    """Create the strategy for this machine and set the Keras precision policy to match."""
    chosen = plan(len(tf.config.list_physical_devices("GPU")), os.environ.get("TF_CONFIG"), mixed_precision)
    if chosen.kind == "multi_worker":
        strategy = _MultiWorkerMirroredStrategy()
    elif chosen.kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    keras.mixed_precision.set_global_policy("mixed_float16" if chosen.mixed_precision else "float32")
    log.info("training with %s (%d replica(s) in sync)", chosen.describe(), strategy.num_replicas_in_sync)
    return strategy, chosen


# The instruction sets oneDNN picks its kernels by: a virtual machine's CPU is often named only
# "Intel Xeon Processor", and these tell its kinds apart.
VECTOR_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni"})


def describe_machine(chosen: Plan) -> dict[str, Any]:
    """The machine a run trains on, as a run's ``sessions.jsonl`` records it.

    The same settings and seed repeat a run exactly on one kind of machine but not on another
    (the CPU's instruction set changes the order and rounding of TensorFlow's kernels), so
    two runs are compared as like for like only when they trained on the same kind.

    What it cannot tell: ``cores`` is the CPUs this process may run on (a cpuset), not a
    container's CPU quota; an ARM CPU's /proc/cpuinfo names no model or x86 vector
    instructions (it reads as the architecture alone); in a multi-worker run only the chief,
    which writes the run directory, is described.
    """
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            first = info.read().split("\n\n")[0]  # the first processor's block
        fields = {key.strip(): value.strip() for key, value in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
        cpu = fields.get("model name", cpu)
        flags = set(fields.get("flags", "").split())
    except OSError:  # not Linux
        pass
    try:
        cores = len(os.sched_getaffinity(0))  # the CPUs this process may run on
    except AttributeError:
        cores = os.cpu_count() or 0
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu, "vector_instructions": sorted(flags & VECTOR_FLAGS), "cores": cores, "gpus": gpus, "strategy": chosen.describe(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__, "python": platform.python_version()}


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy adapted to what Keras 3.15's ``fit`` asks of it.

    Keras reduces (a) the first ``(x, y)`` batch, a nest, to build the model, and (b) every
    step's scalar loss and metrics with ``axis=0``. The collective implementation takes
    neither, so ``reduce`` here maps over nests and reduces scalars across replicas.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super(_MultiWorkerMirroredStrategy, self)

        def one(v):
            local = self.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
            scalar = getattr(local, "shape", None) is not None and local.shape.rank == 0
            return parent.reduce(reduce_op, v, None if scalar else axis)

        return tf.nest.map_structure(one, value)
