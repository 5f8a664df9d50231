//! Batches from the image cache on a background thread: (images B x 3 x crop x crop f32,
//! labels B u32), shuffled by (seed, epoch), in order, or drawn class-balanced (PyTorch's
//! `WeightedRandomSampler` with each image weighted 1 / its class's count: as many draws as
//! images, with replacement, each class equally likely), the last partial batch kept. Each
//! batch's images are transformed in parallel; two batches are prepared ahead.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::cache::ImageCache;
use crate::error::{Error, Result};
use crate::transform::{Normalization, TrainTransform, center_crop, to_normalized_chw_into};

/// Which transform a loader applies to the cached (resized) images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Augment {
    /// The eval transform: the cache already holds `Resize(256)`; this centre-crops.
    Eval {
        /// Side of the centre crop.
        crop: u32,
    },
    /// The train transform, drawn per (seed, epoch, sample).
    Train(TrainTransform),
}

/// What one pass over a cache yields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch; the last batch may be smaller.
    pub batch_size: usize,
    /// The images of an epoch, in what order.
    pub order: Order,
    /// Seed of the order and of the train transform's draws.
    pub seed: u64,
    /// Which epoch (0-based) the order and draws are for.
    pub epoch: u64,
    /// The transform after the cache's resize.
    pub augment: Augment,
    /// Mean and std applied to the [0, 1] pixels.
    pub normalization: Normalization,
}

/// The images of an epoch and their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Each image once, in the cache's order.
    Stored,
    /// Each image once, shuffled by (seed, epoch).
    Shuffled,
    /// As many images as the cache holds, drawn with replacement by (seed, epoch), each class
    /// equally likely and each image of a class equally likely: PyTorch's
    /// `WeightedRandomSampler(1 / count[label], len, replacement=True)`, rare classes' images
    /// seen several times an epoch (each time its own augmentation), common ones' left out.
    ClassBalanced,
}

/// One batch.
#[derive(Debug)]
pub struct Batch {
    /// (B, 3, crop, crop), f32, normalised.
    pub images: Tensor,
    /// (B,), u32.
    pub labels: Tensor,
    /// The cache indices of the batch's images.
    pub indices: Vec<usize>,
}

/// An iterator of batches built on a background thread.
#[derive(Debug)]
pub struct Batches {
    receiver: Receiver<Result<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.receiver.recv().ok();
        // The worker has finished when its sender is gone; a panic there becomes an error.
        if next.is_none()
            && let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            return Some(Err(Error::Loader("its thread panicked".into())));
        }
        next
    }
}

/// The images of one epoch over images of `labels`, as `config.order` says: each once (the
/// cache's order, or shuffled by (seed, epoch)), or drawn class-balanced by (seed, epoch).
pub fn epoch_order(labels: &[u32], config: &LoaderConfig) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(config.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let mut order: Vec<usize> = (0..labels.len()).collect();
    match config.order {
        Order::Stored => {}
        Order::Shuffled => order.shuffle(&mut rng),
        Order::ClassBalanced => {
            let mut of_class: std::collections::BTreeMap<u32, Vec<usize>> = std::collections::BTreeMap::new();
            for (index, &label) in labels.iter().enumerate() {
                of_class.entry(label).or_default().push(index);
            }
            let classes: Vec<&Vec<usize>> = of_class.values().collect();
            for slot in &mut order {
                let class = classes[rng.random_range(0..classes.len())];
                *slot = class[rng.random_range(0..class.len())];
            }
        }
    }
    order
}

/// Each of `order`'s images' key for its train transform's draws: its index the first time it
/// comes, and another (index + k x the epoch's length the k-th time after) each time it comes
/// again, so that an image drawn twice in an epoch is augmented twice, as a PyTorch dataset's
/// `__getitem__` is. An epoch is as long as the images are many, so every index is below it.
fn draw_keys(order: &[usize]) -> Vec<u64> {
    let len = order.len();
    let mut seen = vec![0u64; len];
    order
        .iter()
        .map(|&index| {
            let key = index as u64 + seen[index] * len as u64;
            seen[index] += 1;
            key
        })
        .collect()
}

/// One image of a batch, transformed (its draws keyed by `draw_key`) and normalised into `out`
/// (3 x crop x crop values).
pub fn sample_into(cache: &ImageCache, (index, draw_key): (usize, u64), config: &LoaderConfig, out: &mut [f32]) -> Result<()> {
    let image = cache.read(index)?;
    let transformed = match config.augment {
        Augment::Eval { crop } => center_crop(&image, crop),
        Augment::Train(transform) => {
            let draw = transform.draw(config.seed, config.epoch, draw_key, image.width(), image.height());
            transform.apply_owned(image, &draw)?
        }
    };
    to_normalized_chw_into(&transformed, &config.normalization, out);
    Ok(())
}

/// Starts the background thread yielding the batches of one epoch over `cache`, whose image i
/// has label `labels[i]`.
pub fn batches(cache: Arc<ImageCache>, labels: Arc<Vec<u32>>, config: LoaderConfig) -> Result<Batches> {
    if labels.len() != cache.len() {
        return Err(Error::Loader(format!("{} labels for a cache of {} images", labels.len(), cache.len())));
    }
    if config.batch_size == 0 {
        return Err(Error::Loader("the batch size must be at least 1".into()));
    }
    let crop = match config.augment {
        Augment::Eval { crop } => crop,
        Augment::Train(transform) => transform.size,
    } as usize;
    let (sender, receiver) = sync_channel(2);
    let worker = std::thread::Builder::new()
        .name("medxfer-batches".into())
        .spawn(move || {
            let order = epoch_order(&labels, &config);
            let keys = draw_keys(&order);
            for (indices, keys) in order.chunks(config.batch_size).zip(keys.chunks(config.batch_size)) {
                let mut flat = vec![0f32; indices.len() * 3 * crop * crop];
                let built = flat
                    .par_chunks_mut(3 * crop * crop)
                    .zip(indices.par_iter().zip(keys))
                    .try_for_each(|(slot, (&i, &key))| sample_into(&cache, (i, key), &config, slot))
                    .and_then(|()| {
                        let images = Tensor::from_vec(flat, (indices.len(), 3, crop, crop), &Device::Cpu)?;
                        let batch_labels: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
                        let labels = Tensor::from_vec(batch_labels, indices.len(), &Device::Cpu)?;
                        Ok(Batch { images, labels, indices: indices.to_vec() })
                    });
                let failed = built.is_err();
                if sender.send(built).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(|e| Error::Loader(format!("cannot start its thread: {e}")))?;
    Ok(Batches { receiver, worker: Some(worker) })
}
