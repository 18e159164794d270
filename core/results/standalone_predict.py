"""Predict with an exported model as a user would: a fresh Python that has never seen this project.

Run as a script with an isolated interpreter (`python -I standalone_predict.py
FORMAT MODEL IMAGES OUT`, from a folder outside the project): it imports only
Keras, TensorFlow and NumPy, never `core`, so an export that needs anything
from this project fails here exactly as it would on a user's machine.

FORMAT: "keras" (`keras.saving.load_model(MODEL, safe_mode=True)`) or
"saved_model" (`tf.saved_model.load(MODEL).signatures["serving_default"]`).
IMAGES: a .npy of float32 (N, S, S, 3) raw pixels in [0, 255].
OUT: where to write the float32 logits (N, units) as .npy.
Prints one JSON line: {"seconds": time spent predicting, after a warm-up batch}.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

BATCH = 32


def load(kind, path):
    if kind == "keras":
        import keras

        model = keras.saving.load_model(path, safe_mode=True)
        return lambda batch: model.predict_on_batch(batch)
    import tensorflow as tf

    serving = tf.saved_model.load(path).signatures["serving_default"]
    return lambda batch: next(iter(serving(tf.constant(batch)).values())).numpy()


def main(kind, model_path, images_path, out_path):
    images = np.load(images_path)
    predict = load(kind, model_path)
    predict(images[:BATCH])  # warm-up: tracing and allocation are not latency
    start = time.perf_counter()
    logits = np.concatenate([np.asarray(predict(images[i:i + BATCH])) for i in range(0, len(images), BATCH)])
    seconds = time.perf_counter() - start
    np.save(out_path, logits.astype(np.float32))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
