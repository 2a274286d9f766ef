"""Run by test_reproducibility.py in a fresh process with 4 forced CPU devices: 8 seeds trained
to the end of a short schedule on one device and sharded over four, then measured; prints each
seed's final training loss, test accuracy and full-space Metric 2.1 per device count as JSON.

Sharded training computes the same products in differently shaped batches, so float32 rounding
differs from the first step and SGD amplifies it: the two runs are not expected to agree seed by
seed after full training, only in distribution."""

import json
import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flatmin

data = flatmin.load_dataset("digits")
keys = jax.random.split(jax.random.key(0), 8)
model = flatmin.build_model("mlp", 10, hidden=(32,))
x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
out = {"device_count": jax.device_count()}
for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
    mesh = flatmin.runtime.seed_mesh(devices)
    run = flatmin.train_seeds(
        model, optax.adam(1e-3), data, keys, batch_size=16, epochs=12, mesh=mesh
    )
    phi = flatmin.seed_sharpness(model, run.variables, x, y, None, 1e-3, key=jax.random.key(2),
                                 mesh=mesh)  # fmt: skip
    out[name] = {
        "train_loss": np.asarray(run.history.train_loss[:, -1]).tolist(),
        "test_accuracy": np.asarray(run.history.test_accuracy[:, -1]).tolist(),
        "sharpness": np.asarray(phi.value).tolist(),
    }
print(json.dumps(out))
