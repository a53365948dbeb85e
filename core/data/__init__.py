"""The data room: the kit every modality's datasets are made of.

Reproducible per-sample seeds, :class:`SafeDataset` (a bad sample is named, skipped and counted, never the end
of a long run), the epoch sampler, dataset traits a dataset declares, the file kit (list files, class
folders, the data root) and splits read from tar shards. Floor 0: it imports nothing of anymae.
"""

from anymae.core.data.files import (
    ListedFile,
    cache_dir,
    check_channel_stats,
    check_input_shape,
    class_folder_samples,
    class_folders,
    find_files,
    generate_once,
    read_classes_file,
    read_file_list,
    resolve_data_file,
    resolve_data_root,
    under_root,
)
from anymae.core.data.samples import (
    BadSampleError,
    DataError,
    DatasetTraits,
    DatasetWithTraits,
    EpochSampler,
    PairedSafeDataset,
    SafeDataset,
    TimedItems,
    dataset_traits,
    input_size,
    sample_seed,
    seeded,
    to_device,
)
from anymae.core.data.shards import ShardSet, ShardSplit, ShardStream, resolve_shards

__all__ = [
    "BadSampleError",
    "DataError",
    "DatasetTraits",
    "DatasetWithTraits",
    "EpochSampler",
    "ListedFile",
    "PairedSafeDataset",
    "SafeDataset",
    "ShardSet",
    "ShardSplit",
    "ShardStream",
    "TimedItems",
    "cache_dir",
    "check_channel_stats",
    "check_input_shape",
    "class_folder_samples",
    "class_folders",
    "dataset_traits",
    "find_files",
    "generate_once",
    "input_size",
    "read_classes_file",
    "read_file_list",
    "resolve_data_file",
    "resolve_data_root",
    "resolve_shards",
    "sample_seed",
    "seeded",
    "to_device",
    "under_root",
]
