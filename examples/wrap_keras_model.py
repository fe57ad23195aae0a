"""Wrap my existing Keras model: Keras 3 in, pruned + adversarially fine-tuned int8 .tflite out.

By default this builds and trains the kind of model users bring: a **Keras 3** ``keras.Sequential``
with a softmax output, trained with ``model.fit`` on the members of the bundled digits (no
download), and saved as ``keras3_model.keras``. Pass ``--model my_model.keras`` to start from
your own file instead (Keras 3 or tf_keras; inputs in [0, 1] shaped like ``--data``).

TF-MOT and tfsafe run on Keras 2 (``tf_keras``), so ``tfsafe.to_tf_keras`` rebuilds the model
with the same weights (outputs are checked to match). Then the Keras-native pieces compose:

    pruned = prune_safe(model, 0.8)                # PrunableSafe around every Conv/Dense
    trainer = AdversarialModel(pruned, eps, steps) # PGD examples crafted inside train_step
    trainer.compile(optimizer); trainer.fit(x, y)  # plain Model.fit
    compressed = strip(pruned)                     # plain Keras layers, zeros baked in

and the result is audited (clean, PGD, corruptions, membership) and exported to a checked int8
``.tflite``.

Run:
    .venv/bin/python examples/wrap_keras_model.py              # digits, ~1 minute on 2 cores
    .venv/bin/python examples/wrap_keras_model.py --model my_model.keras --data mnist --data_dir DIR

``--model`` should have been trained on this script's training split (same ``--data`` and
``--seed``) for its membership row to mean anything; a model trained elsewhere gets no
membership row (the compressed model, fine-tuned on the split's members, still does).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as common  # noqa: E402
import numpy as np  # noqa: E402

import tfsafe  # noqa: E402
from tfsafe._keras import keras  # noqa: E402
from tfsafe.compress.pruning import prune_safe  # noqa: E402
from tfsafe.compress.strip import strip  # noqa: E402
from tfsafe.io import atomic_path, save_model  # noqa: E402
from tfsafe.safety.adversarial_training import AdversarialModel, EpsilonRamp  # noqa: E402


def train_keras3_model(splits, epochs, seed, path):
    """A user's Keras 3 model: softmax output, compiled and fit the Keras 3 way, saved to ``path``."""
    import keras as keras3  # Keras 3 (the `keras` package); tfsafe itself runs on tf_keras

    keras3.utils.set_random_seed(seed)
    x, y = splits.train
    model = keras3.Sequential([
        keras3.Input(x.shape[1:]),
        keras3.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras3.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras3.layers.MaxPooling2D(),
        keras3.layers.Flatten(),
        keras3.layers.Dense(64, activation="relu"),
        keras3.layers.Dense(common.num_classes(splits), activation="softmax"),
    ], name="my_keras3_model")
    model.compile(optimizer=keras3.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=int(epochs), batch_size=32, verbose=0)
    with atomic_path(path) as tmp:
        model.save(tmp)
    return model


def main(argv=None):
    p = common.parser("wrap_keras_model", __doc__)
    p.add_argument("--model", default=None, help="your .keras/.h5 model (default: build and train a Keras 3 one)")
    p.add_argument("--sparsity", type=float, default=0.8, help="fraction of prunable weights that are zero")
    p.add_argument("--epochs", type=int, default=10, help="pruned + adversarial fine-tuning epochs")
    p.add_argument("--train_steps", type=int, default=5, help="PGD steps per training batch")
    p.add_argument("--batch_size", type=int, default=32)
    args = common.parse(p, argv)
    if not 0.0 <= args.sparsity < 1.0:
        p.error("--sparsity must be in [0, 1)")
    clock = common.Clock()
    splits = common.load_splits(args)
    os.makedirs(args.out, exist_ok=True)

    if args.model:
        clock(f"loading {args.model}")
        model = tfsafe.load_model(args.model)  # a Keras 3 file comes back as tf_keras already
        trained_here = False
    else:
        path = os.path.join(args.out, "keras3_model.keras")
        clock(f"training a Keras 3 model ({args.dense_epochs} epochs on {len(splits.train[0])} members) -> {path}")
        k3 = train_keras3_model(splits, args.dense_epochs, args.seed, path)
        model = tfsafe.to_tf_keras(k3)
        diff = float(np.abs(model.predict(splits.test[0], verbose=0) - k3.predict(splits.test[0], verbose=0)).max())
        print(f"to_tf_keras: {type(k3).__module__}.{type(k3).__name__} -> {type(model).__module__}."
              f"{type(model).__name__}, max output difference {diff:.2e}")
        trained_here = True

    clock(f"prune_safe to {args.sparsity:.0%} + AdversarialModel fine-tuning (PGD eps {args.eps} x "
          f"{args.train_steps} steps, {args.epochs} epochs)")
    keras.utils.set_random_seed(args.seed)
    pruned = prune_safe(model, args.sparsity)  # a clone: `model` keeps its weights
    trainer = AdversarialModel(pruned, eps=args.eps, steps=args.train_steps)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    trainer.fit(*splits.train, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                callbacks=[EpsilonRamp(ramp_epochs=1.0)])
    compressed = strip(pruned)

    saved = save_model(compressed, os.path.join(args.out, "compressed.keras"))
    exported = common.export_int8(compressed, os.path.join(args.out, "compressed_int8.tflite"), splits)

    clock("evaluating the original and the compressed model (clean, PGD, corruptions, membership)")
    tests = common.TESTS if trained_here else [t for t in common.TESTS if t != "membership"]
    rows = [
        ("your model", "dense", common.evaluate(model, splits, args, reference=model, tests=tests),
         common.size_of(model, model)),
        (f"pruned {args.sparsity:.0%} + PGD", "compressed", common.evaluate(compressed, splits, args, reference=model),
         common.size_of(compressed, model), {"file": exported}),
    ]
    clock("done")
    return common.report(f"Wrapped Keras model on {args.data}", args, splits.sizes(), rows, args.out,
                         source_model=args.model or "Keras 3 model trained by this script", model_path=saved)


if __name__ == "__main__":
    common.run(main)
