//! A loader's batches on the model's device, each queued one step ahead.
//!
//! On a GPU a batch's copy (77 MB at batch 128, 224 px) used to come between one step's loss
//! read and the next step, the GPU idle while the host waited for it. Here the loop takes a batch
//! (already on the device), queues its work, then [`DeviceBatches::prefetch`] moves the next
//! batch through medxfer-kernels' page-locked [`medxfer_kernels::Upload`] while the GPU still
//! runs that work, and only then reads its results. The batches, their order and every value are
//! the same as without it; on the CPU it changes nothing.

use std::cell::RefCell;

use candle_core::{Device, Tensor};
use medxfer_data::{Batch, Batches};
use medxfer_kernels::Upload;

use crate::Result;

/// One batch on the device: its images and labels, and their places in the split.
pub(crate) struct DeviceBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

thread_local! {
    /// Each thread's page-locked buffers, kept from one loop to the next: page-locking two
    /// batches' worth anew for every epoch's training and validation loops would cost more than
    /// the copies it speeds up. Nothing is allocated on the CPU.
    static UPLOAD: RefCell<Upload> = RefCell::new(Upload::new());
}

/// The batches of a loader moved to `device`, one ahead of the loop (see the module).
pub(crate) struct DeviceBatches {
    batches: Batches,
    device: Device,
    next: Option<DeviceBatch>,
}

impl DeviceBatches {
    pub(crate) fn new(batches: Batches, device: &Device) -> Self {
        DeviceBatches { batches, device: device.clone(), next: None }
    }

    /// The next batch on the device: the one [`Self::prefetch`] moved, else the loader's next
    /// moved now; `None` once the loader is done.
    pub(crate) fn take(&mut self) -> Result<Option<DeviceBatch>> {
        match self.next.take() {
            Some(batch) => Ok(Some(batch)),
            None => self.load(),
        }
    }

    /// Moves the loader's next batch to the device now, its copy queued behind the work queued
    /// so far, for the next [`Self::take`]. Call it once a batch's work is queued and before
    /// reading its results. Nothing if a batch is already waiting or the loader is done.
    pub(crate) fn prefetch(&mut self) -> Result<()> {
        if self.next.is_none() {
            self.next = self.load()?;
        }
        Ok(())
    }

    fn load(&mut self) -> Result<Option<DeviceBatch>> {
        let Some(batch) = self.batches.next() else { return Ok(None) };
        let Batch { images, labels, indices } = batch?;
        let (images, labels) = UPLOAD.with(|upload| -> Result<(Tensor, Tensor)> {
            let mut upload = upload.borrow_mut();
            Ok((upload.to_device(&images, &self.device)?, upload.to_device(&labels, &self.device)?))
        })?;
        Ok(Some(DeviceBatch { images, labels, indices }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use medxfer_data::{Augment, Catalog, ImageCache, LoaderConfig, Normalization, batches, ood_entries, scan_dataset, synth};

    use super::*;

    /// The batches come out as the loader's, in its order, whether the loop prefetches (once or
    /// twice) or not, and the feed ends when the loader does.
    #[test]
    fn the_feed_gives_the_loaders_batches_in_order() {
        let catalog = Catalog::load_default().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = catalog.dataset("pad-ufes-20").unwrap();
        synth::synthesize(spec, &dir.path().join("data"), 2, 5).unwrap();
        let entries = ood_entries(&scan_dataset(spec, &dir.path().join("data")).unwrap().records);
        let cache =
            Arc::new(ImageCache::open_or_build(&dir.path().join("cache"), "pad", &dir.path().join("data"), &entries, 16, false).unwrap());
        let labels = Arc::new((0..entries.len() as u32).map(|i| i % 3).collect::<Vec<u32>>());
        let config = LoaderConfig {
            batch_size: 5,
            order: medxfer_data::Order::Shuffled,
            seed: 3,
            epoch: 1,
            augment: Augment::Eval { crop: 8 },
            normalization: Normalization::IMAGENET,
        };
        let truth: Vec<Batch> = batches(cache.clone(), labels.clone(), config).unwrap().map(Result::unwrap).collect();
        assert!(truth.len() >= 3, "{} batches", truth.len());
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();

        let mut feed = DeviceBatches::new(batches(cache, labels, config).unwrap(), &Device::Cpu);
        let mut seen = 0;
        while let Some(batch) = feed.take().unwrap() {
            let expected = &truth[seen];
            assert_eq!(batch.indices, expected.indices, "batch {seen}");
            assert_eq!(values(&batch.images), values(&expected.images), "batch {seen}");
            assert_eq!(batch.labels.to_vec1::<u32>().unwrap(), expected.labels.to_vec1::<u32>().unwrap(), "batch {seen}");
            // Every other batch is taken without a prefetch, and one prefetch is repeated.
            if seen % 2 == 0 {
                feed.prefetch().unwrap();
                feed.prefetch().unwrap();
            }
            seen += 1;
        }
        assert_eq!(seen, truth.len());
        feed.prefetch().unwrap();
        assert!(feed.take().unwrap().is_none());
    }
}
