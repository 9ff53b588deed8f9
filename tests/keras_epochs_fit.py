"""Run in a process of its own by tests/test_backends.py, with a Keras row's
ENV set (Keras picks its backend once, at import): for a few cells of the
row's optimizer and custom levels, trains the cell as the harness does (all
updates as one epoch of ``fit``, ``keras_common._fit``) and as the notebook
does (``fit(x, y, batch_size=, epochs=, shuffle=False)``, each batch's loss
read by a callback), and prints, as JSON, whether the parameters and the
loss curves are the same bit for bit.

    python tests/keras_epochs_fit.py <backend> <cell as JSON> ...
"""
import importlib
import json
import sys

import numpy as np


def notebook_fit(keras, keras_common, spec, row):
    """fit over the cell's epochs, one batch after another: the reference."""

    class LastLoss(keras.metrics.Metric):
        def __init__(self, loss_fn):
            super().__init__(name="last_loss", dtype=spec.dtype)
            self.loss_fn = loss_fn
            self.last = self.add_variable(shape=(), initializer="zeros", dtype=spec.dtype)

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.last.assign(self.loss_fn(y_true, y_pred))

        def result(self):
            return keras.ops.convert_to_tensor(self.last)

    with keras_common.floatx(keras, spec.dtype):
        model, read = keras_common.build(keras, spec)
        reduction = "sum" if spec.reduction == "sum" else "sum_over_batch_size"
        loss_fn = keras.losses.BinaryCrossentropy(from_logits=True, reduction=reduction,
                                                  dtype=spec.dtype)
        model.compile(optimizer=keras_common.make_optimizer(keras, spec), loss=loss_fn,
                      metrics=[LastLoss(loss_fn)], jit_compile=row.jit_compile(spec.mode),
                      run_eagerly=spec.mode == "eager")
        curve = []
        keep = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: curve.append(float(logs["last_loss"])))
        model.fit(spec.x, spec.y, batch_size=spec.batch_size or len(spec.x), epochs=spec.epochs,
                  shuffle=False, verbose=0, callbacks=[keep])
        return read(), curve


def main(backend, cells):
    from harness import registry
    from harness.tasks import Cell, TrainSpec

    import keras
    from backends import keras_common

    mod = importlib.import_module(registry.backend(backend).module)
    out = []
    for d in cells:
        spec = TrainSpec.from_cell(Cell.from_dict(d))
        result = mod.TRAINERS[spec.level](spec)
        params, curve = notebook_fit(keras, keras_common, spec, mod.ROW)
        out.append({"params": all(np.array_equal(params[k], result.params_final[k])
                                  for k in params),
                    "curve": curve == result.loss_curve, "updates": len(curve)})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], [json.loads(a) for a in sys.argv[2:]])
