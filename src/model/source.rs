//! Where a model's tensors and metadata come from: a GGUF file (or split set), or the base
//! part of an expert store. The weight loader only sees this trait.

use bytes::Bytes;

use crate::gguf::{GgufModel, Metadata};
use crate::quant::GgmlType;

/// A tensor's type and dimensions (GGUF order: innermost first).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// Element type.
    pub ty: GgmlType,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
}

/// Named tensors plus the model's metadata.
pub trait TensorSource: Send + Sync {
    /// The key/value metadata (architecture, hyperparameters, tokenizer, ...).
    fn metadata(&self) -> &Metadata;
    /// A tensor's type and shape, if present.
    fn tensor_meta(&self, name: &str) -> Option<TensorMeta>;
    /// A tensor's bytes as a shared handle (no copy).
    fn tensor_bytes(&self, name: &str) -> Option<Bytes>;
}

impl TensorSource for GgufModel {
    fn metadata(&self) -> &Metadata {
        GgufModel::metadata(self)
    }

    fn tensor_meta(&self, name: &str) -> Option<TensorMeta> {
        self.tensor(name).map(|t| TensorMeta { ty: t.ggml_type, dims: t.dims.clone() })
    }

    fn tensor_bytes(&self, name: &str) -> Option<Bytes> {
        GgufModel::tensor_bytes(self, name).map(|(_, b)| b)
    }
}
