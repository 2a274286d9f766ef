"""Run by test_sharding.py in a fresh process with 4 forced CPU devices (the device count is
fixed when JAX starts): trains and measures 3 seeds on one device and sharded over four
(padded to 4), and prints what the test compares as JSON."""

import json
import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flatmin
from flatmin.runtime.sharding import pad_seeds, place, seed_sharding

data = flatmin.load_dataset("digits")
keys = jax.random.split(jax.random.key(0), 3)
one, four = flatmin.runtime.seed_mesh(jax.devices()[:1]), flatmin.runtime.seed_mesh()
x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
model = flatmin.build_model("mlp", 10, hidden=(16,))


def train(keys, **kwargs):
    return flatmin.train_seeds(
        model, optax.adam(1e-3), data, keys, batch_size=64, epochs=2, **kwargs
    )


trained0 = train(keys[:1])
params0 = jax.tree.map(lambda leaf: leaf[0], trained0.variables["params"])
A = flatmin.random_subspace(jax.random.key(1), params0, 5)

out = {"device_count": jax.device_count()}
runs, sharp = {}, {}
for name, mesh in (("one", one), ("four", four)):
    runs[name] = train(keys, mesh=mesh)
    sharp[name] = [
        flatmin.seed_sharpness(
            model, runs[name].variables, x, y, matrix, 1e-3, key=jax.random.key(2), mesh=mesh
        ).value
        for matrix in (None, A)
    ]
a, b = runs["one"], runs["four"]
out["shapes"] = [np.shape(leaf) for leaf in jax.tree.leaves(b.variables)]
out["params_max_abs_diff"] = max(
    float(np.max(np.abs(u - v)))
    for u, v in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True)
)
out["history_max_abs_diff"] = max(
    float(np.max(np.abs(u - v))) for u, v in zip(a.history, b.history, strict=True)
)
out["epochs"] = [a.epochs.tolist(), b.epochs.tolist()]
out["sharpness"] = {
    name: [np.asarray(v).tolist() for v in values] for name, values in sharp.items()
}
placed = place(pad_seeds(keys, 4), seed_sharding(four))
out["seeds_per_device"] = [int(shard.data.shape[0]) for shard in placed.addressable_shards]
print(json.dumps(out))
