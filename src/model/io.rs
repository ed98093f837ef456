//! Safetensors checkpoints with PyTorch `nn.Sequential` state-dict names.

use super::ModelError;
use super::net::{Net, parameter_slots};
use super::spec::{LayerSpec, NetSpec};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

impl Net {
    /// Writes every parameter and buffer to a safetensors file a PyTorch `nn.Sequential` of the
    /// same layers can `load_state_dict` (BatchNorm's `num_batches_tracked` included).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for named in self.named_vars() {
            tensors.insert(named.name.clone(), named.var.as_tensor().detach());
        }
        for (index, layer) in self.spec().layers.iter().enumerate() {
            if matches!(layer, LayerSpec::BatchNorm {}) {
                let steps = Tensor::new(self.batch_norm_steps(index) as i64, &Device::Cpu)?;
                tensors.insert(format!("{index}.num_batches_tracked"), steps);
            }
        }
        candle_core::safetensors::save(&tensors, path).map_err(|source| ModelError::Checkpoint {
            path: path.to_path_buf(),
            problem: source.to_string(),
        })
    }

    /// Loads a safetensors checkpoint for `spec`, failing with every missing, unexpected,
    /// wrongly shaped or non-finite (NaN, infinity) key listed.
    pub fn load(spec: &NetSpec, path: &Path) -> Result<Net, ModelError> {
        let checkpoint_error = |problem: String| ModelError::Checkpoint {
            path: path.to_path_buf(),
            problem,
        };
        if !path.exists() {
            return Err(checkpoint_error("file not found".into()));
        }
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| checkpoint_error(format!("not a readable safetensors file: {e}")))?;
        let shapes = spec.activation_shapes()?;
        let mut problems = Vec::new();
        let mut non_finite = Vec::new();
        let mut parameters = Vec::new();
        for slot in parameter_slots(spec, &shapes) {
            match tensors.remove(&slot.name) {
                None => problems.push(format!("missing key {} (shape {:?})", slot.name, slot.dims)),
                Some(tensor) if tensor.dims() != slot.dims.as_slice() => problems.push(format!(
                    "key {} has shape {:?}, the architecture needs {:?}",
                    slot.name,
                    tensor.dims(),
                    slot.dims
                )),
                Some(tensor) => {
                    let tensor = tensor.to_dtype(DType::F32)?;
                    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
                    let bad = values.iter().filter(|v| !v.is_finite()).count();
                    if bad > 0 {
                        non_finite.push(format!("{}: {bad} of {} values", slot.name, values.len()));
                    }
                    parameters.push((slot.name, tensor));
                }
            }
        }
        let mut batch_norm_steps = Vec::new();
        for (index, layer) in spec.layers.iter().enumerate() {
            if matches!(layer, LayerSpec::BatchNorm {})
                && let Some(steps) = tensors.remove(&format!("{index}.num_batches_tracked"))
            {
                let steps = steps
                    .to_dtype(DType::I64)?
                    .flatten_all()?
                    .to_vec1::<i64>()?;
                batch_norm_steps.push((index, steps.first().copied().unwrap_or(0).max(0)));
            }
        }
        let mut unexpected: Vec<_> = tensors.keys().cloned().collect();
        unexpected.sort();
        for key in unexpected {
            problems.push(format!("unexpected key {key}"));
        }
        if !problems.is_empty() {
            return Err(checkpoint_error(format!(
                "does not match the architecture:\n  {}",
                problems.join("\n  ")
            )));
        }
        if !non_finite.is_empty() {
            return Err(checkpoint_error(format!(
                "holds non-finite weights (NaN or infinity), which cannot be scored:\n  {}",
                non_finite.join("\n  ")
            )));
        }
        let mut net = Net::from_parameters(spec, shapes, parameters)?;
        for (index, steps) in batch_norm_steps {
            net.set_batch_norm_steps(index, steps as u64);
        }
        Ok(net)
    }
}
