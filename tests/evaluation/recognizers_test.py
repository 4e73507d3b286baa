"""Face recognizers: the FaceNet port against its frozen graph, and the
verification protocol with the independent judge on real LFW fold-1 pairs."""

import numpy as np
import pytest

from fit_jax.conversion import convert_facenet
from fit_jax.data import pairs as pairs_file
from fit_jax.evaluation import lfw_pairs, metrics, recognizers

from ..conftest import DATA

pytestmark = pytest.mark.real_faces

LFW = DATA / "lfw_subset"
LANDMARKS = "data/lfw_subset_landmarks.txt"


def _fold1(limit=None):
  pairs, landmarks, _ = lfw_pairs.select(
    pairs_file.read_pairs(str(LFW / "pairs.txt")), str(LFW / "lfw"), LANDMARKS, [1], limit
  )
  return pairs, lfw_pairs.load_faces(pairs, str(LFW / "lfw"), landmarks, 128)


def _accuracy(recognizer, pairs, faces):
  embeddings = recognizer(faces.images, faces.landmarks, 128)
  first = [faces.index[p.first] for p in pairs]
  second = [faces.index[p.second] for p in pairs]
  scores = metrics.cosine_scores(embeddings[first], embeddings[second])
  same = np.array([p.same for p in pairs])
  return metrics.verification_accuracy(scores, same, np.arange(len(pairs)) % 10)["accuracy"]


def test_facenet_flax_port_reproduces_the_frozen_graph():
  tf = pytest.importorskip("tensorflow")
  import jax

  from fit_jax.models import inception_resnet_v1
  from fit_jax.training import alignment

  _, faces = _fold1(limit=4)
  images, points = faces.images[:3], faces.landmarks[:3]
  standardised = np.asarray(
    alignment.recognizer_crops(images * 2.0 - 1.0, points, 128.0, "facenet")
  )
  ours = np.asarray(
    jax.jit(inception_resnet_v1.InceptionResnetV1().apply)(
      {"params": convert_facenet.load_params()}, standardised
    )
  )

  graph_def = tf.compat.v1.GraphDef()
  with open(convert_facenet.default_graph_path(), "rb") as f:
    graph_def.ParseFromString(f.read())
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name="")
  with tf.compat.v1.Session(graph=graph) as session:  # the graph's input is batch 1
    theirs = np.concatenate(
      [session.run("embeddings:0", {"input:0": c[None]}) for c in standardised]
    )
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # Faces of different people are far apart; the embeddings are unit length.
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_facenet_conversion_is_strict():
  constants = convert_facenet.read_graph_constants(convert_facenet.default_graph_path())
  params = convert_facenet.graph_to_params(constants)
  convert_facenet.check_against_model(params)
  missing = dict(params)
  del missing["block17_4"]
  with pytest.raises(ValueError, match="block17_4"):
    convert_facenet.check_against_model(missing)
  bad = dict(params, Bottleneck={"kernel": np.zeros((10, 512), np.float32)})
  with pytest.raises(ValueError, match="Bottleneck/kernel has shape"):
    convert_facenet.check_against_model(bad)
  with pytest.raises(ValueError, match="no place"):
    convert_facenet.graph_to_params({"InceptionResnetV1/Extra/gamma": np.ones(3, np.float32)})
  with pytest.raises(ValueError, match="not a readable"):
    convert_facenet.read_graph_constants(__file__)


def test_independent_judge_verifies_lfw_fold1():
  """dlib on 100 fold-1 pairs (50 same, 50 different; the first of
  each) at the model's 128 px: near its published 99.4 % (measured: 0.99)."""
  pairs, faces = _fold1(limit=100)
  assert len(pairs) == 100 and sum(p.same for p in pairs) == 50
  assert _accuracy(recognizers.build("dlib"), pairs, faces) >= 0.97


def test_unknown_recognizer_and_missing_sphereface_weights():
  with pytest.raises(ValueError, match="unknown recognizer 'vgg'"):
    recognizers.build("vgg")
  with pytest.raises(ValueError, match="needs weights"):
    recognizers.build("sphereface")
