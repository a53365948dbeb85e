"""The evaluate room: what a model is worth without training it further. Top-1/top-5/mAP of a classifier over
a labelled split, weighted k-NN on frozen features, ``anymae embed``'s features of files, and the composite
model's held-out check. Floor 5: it may import weights, build, config and the rooms below, never train.
"""

from anymae.core.evaluate.classification import evaluate
from anymae.core.evaluate.embed import embed_files
from anymae.core.evaluate.knn import knn_classify

__all__ = ["embed_files", "evaluate", "knn_classify"]
