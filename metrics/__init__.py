"""layersync.metrics: Fréchet distance, FID/sFID/IS/precision/recall, FAD, FVD, T2M metrics, point-cloud
MMD/COV/1-NNA, CKA, probes."""

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
from layersync.metrics.clap import CLAP_AUDIO_WEIGHTS, CLAP_MUSIC_WEIGHTS, ClapAudioEncoder, load_clap_audio
from layersync.metrics.fad import (
    CLAP_LAION_AUDIO,
    CLAP_LAION_MUSIC,
    VGGISH_FAD,
    AudioEmbedder,
    FadPreset,
    FadResult,
    fad,
    fad_from_files,
    load_reference_stats,
    save_reference_stats,
)
from layersync.metrics.fad import PRESETS as FAD_PRESETS
from layersync.metrics.fvd import (
    PREPARED_CLIPS,
    STYLEGAN_V,
    FvdProtocol,
    FvdResult,
    ReferenceStats,
    clip_features,
    fvd,
    fvd_from_clips,
)
from layersync.metrics.i3d import I3D, I3D_WEIGHTS, load_i3d
from layersync.metrics.point_clouds import chamfer_matrix, mmd_coverage_1nna, point_cloud_metrics
from layersync.metrics.probes import cka_matrix, linear_cka, linear_probe_accuracy, probe_layers
from layersync.metrics.t2m_evaluator import (
    T2M_EVALUATOR_WEIGHTS,
    T2MEvaluator,
    WordVectorizer,
    load_motion_stats,
    load_t2m_evaluator,
)
from layersync.metrics.text_motion import (
    T2M_PROTOCOL,
    T2MProtocol,
    diversity,
    matching_score,
    mean_ci95,
    motion_fid,
    multimodality,
    r_precision,
)
from layersync.metrics.vggish import VGGISH_WEIGHTS, VGGish, load_vggish
