"""Pseudo-labels: test images labelled by an ensemble's confident predictions, trained on.

The 4th-place Carvana team pretrained on the predicted test set; the seed tried pseudo-labels and
found them unhelpful, so they are a stage switch (`pseudo_labels:` in a stage), never a default.

Two halves, one concern (what a pseudo-label folder is):

- `write_pseudo_labels`: predict the test images with an ensemble's members (the forward pass
  of 05/06: `inference.ensemble_probs` on `testset.TestImages`, mean blend, hflip TTA), score each
  image's confidence, and write the confident ones' probability maps (uint8 PNG, 0..255 =
  probability, at a stated size) plus `pseudo_labels.csv` (id, uncertain_fraction, kept) and
  `pseudo_labels.json` (how they were made) into a folder, atomically (a temporary folder renamed
  into place: a killed run leaves the old folder or the new one, never a mix).
- `load_pseudo_labels` + `PseudoLabelDataset`: what a stage with `pseudo_labels:` adds to its
  training set (never to validation): the kept test images from the TEST store with their soft
  maps as targets, augmented by the training set's own transform; `with_pseudo_labels`
  concatenates them with the training images.

The confidence statistic is the fraction of an image's pixels whose probability lies in the open
band (0.1, 0.9). A good prediction is near 0 or 1 everywhere but on a one-or-two-pixel boundary
ring, so its fraction is small (the ring's area over the frame's); a confused region (shadow,
window, wheel arch) or a blurred boundary widens the band and the fraction grows. Below the
threshold (e.g. 0.01 of the frame) the image's label is almost all confident pixels, and the soft
map keeps the boundary's uncertainty as the target's own. The fraction is measured on the map as
written (the stated size), so the CSV describes exactly what a stage trains on.

Where folders live: a relative `dir` (stage key) or `--out` (CLI) is under the run folder.
A stage's params_hash holds the key as written, not the folder's content: write each round of
pseudo-labels to a new folder, or a finished stage is not retrained on the new labels.
"""

from kaggle_utils.pseudo.cli import main
from kaggle_utils.pseudo.data import PseudoLabelDataset, add_to_stage, with_pseudo_labels
from kaggle_utils.pseudo.folder import (
    COLUMNS,
    CSV_NAME,
    META_NAME,
    UNCERTAIN_BAND,
    pseudo_dir,
    uncertain_fraction,
)
from kaggle_utils.pseudo.labels import PseudoLabels, load_pseudo_labels
from kaggle_utils.pseudo.write import predict_test_probs, write_from_probs, write_pseudo_labels

__all__ = [
    "COLUMNS",
    "CSV_NAME",
    "META_NAME",
    "UNCERTAIN_BAND",
    "PseudoLabelDataset",
    "PseudoLabels",
    "add_to_stage",
    "load_pseudo_labels",
    "main",
    "predict_test_probs",
    "pseudo_dir",
    "uncertain_fraction",
    "with_pseudo_labels",
    "write_from_probs",
    "write_pseudo_labels",
]
