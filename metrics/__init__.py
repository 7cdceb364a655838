"""layersync.metrics: Fréchet distance, FID/sFID/IS/precision/recall, FAD, FVD, T2M metrics, CKA, probes."""

from layersync.metrics.adm_npz import iter_npz_batches, write_reference_batch, write_sample_batch
from layersync.metrics.fid_suite import (
    ReferenceBatch,
    compute_activations,
    evaluate_fid_suite,
    inception_score,
    manifold_radii,
    precision_recall,
    read_reference_batch,
)
from layersync.metrics.frechet import (
    FeatureStats,
    GaussianStats,
    frechet_distance,
    frechet_distance_from_stats,
)
from layersync.metrics.inception import INCEPTION_WEIGHTS, FIDInceptionV3, load_fid_inception, no_tf32
