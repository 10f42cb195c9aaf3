//! The shadow predictor: which experts the coming layers will need, guessed early enough
//! that their reads overlap the current layer's compute.
//!
//! - [`trace`]: routing traces (`odmoe collect`), the data it learns from.
//! - [`predictor`]: the network and its file.
//! - [`train`]: training (`odmoe train-shadow`) and the held-out comparison with the
//!   baselines it must beat.

pub mod predictor;
pub mod trace;
pub mod train;

pub use predictor::Shadow;
pub use trace::{TraceHeader, TraceWriter, Traces};
pub use train::{evaluate, train, Report, TrainOptions};
