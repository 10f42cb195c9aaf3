//! The one narrow interface through which routed experts are reached:
//! `(layer, expert) -> weights`.
//!
//! The forward pass never indexes expert tensors itself. The weights come either straight
//! from the memory-mapped model file ([`ResidentExperts`]) or from positioned reads into a
//! byte-budgeted cache ([`PagedExperts`]), behind the same trait.

mod pager;
mod size;
pub mod store;

pub use pager::{PagedExperts, PagerOptions, PagerStats, PagerStatsSnapshot};
pub use size::parse_size;

use crate::compute::QMatrix;
use crate::Result;

/// The three projections of one routed expert.
#[derive(Clone, Debug)]
pub struct ExpertWeights {
    /// `n_ff × n_embd`.
    pub gate: QMatrix,
    /// `n_ff × n_embd`.
    pub up: QMatrix,
    /// `n_embd × n_ff`.
    pub down: QMatrix,
}

/// Where routed expert weights come from.
pub trait ExpertSource: Send + Sync {
    /// The weights of `expert` in `layer`. Errors (I/O, corruption) name the expert.
    fn expert(&self, layer: usize, expert: usize) -> Result<ExpertWeights>;

    /// The weights of several experts of one layer, in the order asked. Sources that read
    /// from disk override this to read them in parallel.
    fn experts(&self, layer: usize, ids: &[usize]) -> Result<Vec<ExpertWeights>> {
        ids.iter().map(|&e| self.expert(layer, e)).collect()
    }

    /// A hint that `ids` of `layer` will likely be asked for soon: a disk-backed source
    /// starts reading them at low priority. Never changes results.
    fn prefetch(&self, _layer: usize, _ids: &[usize]) {}

    /// Drops the prefetches not yet started for layers up to `through_layer` (all layers
    /// with `None`): the pass they were for has gone by.
    fn cancel_prefetches(&self, _through_layer: Option<usize>) {}
}

/// One layer's experts as stacked matrices (`n_expert` blocks of rows each).
#[derive(Clone, Debug)]
pub struct StackedExperts {
    /// Gate projections of all experts, `n_expert * n_ff` rows.
    pub gate: QMatrix,
    /// Up projections of all experts, `n_expert * n_ff` rows.
    pub up: QMatrix,
    /// Down projections of all experts, `n_expert * n_embd` rows.
    pub down: QMatrix,
    /// Experts in the stack.
    pub n_expert: usize,
}

/// Experts served from memory (a memory-mapped GGUF): each expert is a contiguous row
/// range of the stacked `ffn_{gate,up,down}_exps` tensors, handed out without copying.
pub struct ResidentExperts {
    layers: Vec<Option<StackedExperts>>,
}

impl ResidentExperts {
    /// Builds the source from per-layer stacks (`None` for layers without experts).
    pub fn new(layers: Vec<Option<StackedExperts>>) -> Self {
        ResidentExperts { layers }
    }
}

impl ExpertSource for ResidentExperts {
    fn expert(&self, layer: usize, expert: usize) -> Result<ExpertWeights> {
        let s = self
            .layers
            .get(layer)
            .and_then(|l| l.as_ref())
            .ok_or_else(|| crate::Error::Invalid(format!("layer {layer} has no routed experts")))?;
        if expert >= s.n_expert {
            return Err(crate::Error::Invalid(format!("layer {layer}: expert {expert} out of range ({})", s.n_expert)));
        }
        let ff = s.gate.rows / s.n_expert;
        let d = s.down.rows / s.n_expert;
        Ok(ExpertWeights {
            gate: s.gate.slice_rows(expert * ff, (expert + 1) * ff),
            up: s.up.slice_rows(expert * ff, (expert + 1) * ff),
            down: s.down.slice_rows(expert * d, (expert + 1) * d),
        })
    }
}
