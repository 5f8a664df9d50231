//! How a run's train images are drawn each epoch: each once, shuffled (the reference's
//! `DataLoader(shuffle=True)`), or, as a named option (`--sampler balanced`), class-balanced as
//! PyTorch's `WeightedRandomSampler(1 / count[label], len(train), replacement=True)` draws them:
//! each class equally likely, so an epoch shows the rare classes' images several times (each time
//! augmented anew) and leaves some of the common classes' out. The other remedy for imbalanced
//! classes besides weighting the loss (`criterion.rs`); the loss stays each image's mean.

use medxfer_data::Order;
use serde::{Deserialize, Serialize};

/// How a run's train images are drawn each epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Sampler {
    /// Each image once an epoch, shuffled by (seed, epoch) (the reference).
    #[default]
    Shuffle,
    /// As many draws as images, with replacement, each class equally likely.
    Balanced,
}

impl Sampler {
    /// The option's value as written (`shuffle`, `balanced`), for records and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Sampler::Shuffle => "shuffle",
            Sampler::Balanced => "balanced",
        }
    }

    /// The loader's order of an epoch's train images.
    pub fn order(self) -> Order {
        match self {
            Sampler::Shuffle => Order::Shuffled,
            Sampler::Balanced => Order::ClassBalanced,
        }
    }
}
