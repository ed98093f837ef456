//! Networks: serde layer lists, builtin architectures, forward passes, initialisation, safetensors I/O.
