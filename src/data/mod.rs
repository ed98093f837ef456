//! Datasets as f32 NCHW tensors in [0,1] with u8 labels: IDX / CIFAR loaders, the embedded subset, splits.
