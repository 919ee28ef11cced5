"""Datasets and input pipeline. Importing this package registers the TFDS builders.

TensorFlow only feeds data here: it is kept off accelerators before any builder or pipeline
touches it, so it never reserves GPU memory that JAX needs (and never initialises NCCL).
"""

import tensorflow as tf

tf.config.set_visible_devices([], 'GPU')

# TFDS builders register themselves by being imported (one module per dataset).
# pylint: disable=g-import-not-at-top,unused-import
from feadapter_jax.data.synth_fer import builder as synth_builder  # registers `synth_fer`

# Real datasets, read from a manual directory (layouts: data/README.md).
from feadapter_jax.data import dfew
from feadapter_jax.data import ferv39k
from feadapter_jax.data import mafw

# Image datasets for the image stage (one frame per example, read with num_frames=1).
from feadapter_jax.data import affectnet
from feadapter_jax.data import fer2013
from feadapter_jax.data import ferplus
from feadapter_jax.data import rafdb

# pylint: enable=g-import-not-at-top,unused-import
