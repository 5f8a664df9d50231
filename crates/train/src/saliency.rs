//! Grad-CAM over a split (medxfer-zoo's [`Backbone::grad_cam`]): each image's map for a class,
//! upsampled to the crop the model saw, batch by batch as the eval loader gives them (the order,
//! crops and normalisation of [`crate::logits_split`]).

use candle_core::{DType, Device, Tensor};
use medxfer_data::batches;
use medxfer_zoo::Backbone;

use crate::device_batches::DeviceBatches;
use crate::error::{Error, Result};
use crate::finetune::{RunSettings, SplitData, eval_loader};

/// One batch's saliency, on the CPU in f32.
#[derive(Debug)]
pub struct SaliencyBatch {
    /// The split's indices of the batch's images.
    pub indices: Vec<usize>,
    /// The crops as the model saw them, (B, 3, H, W), normalised.
    pub crops: Tensor,
    /// Each image's Grad-CAM map upsampled to its crop, (B, H, W): bilinear with half-pixel
    /// centres (PyTorch's `align_corners=False`, OpenCV's `resize` that pytorch-grad-cam uses),
    /// neither normalised nor clipped.
    pub maps: Tensor,
    /// The maps' grid before upsampling (rows, columns): the target layer's (1 x 1 says the
    /// crop is too small for the network to say where).
    pub grid: (usize, usize),
}

/// The batches of [`SaliencyBatch`]es of a split, each image's map for its class in `classes`.
pub struct SaliencyBatches<'a> {
    model: &'a Backbone,
    feed: DeviceBatches,
    classes: &'a [u32],
}

impl std::fmt::Debug for SaliencyBatches<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaliencyBatches").field("model", &self.model.name()).field("images", &self.classes.len()).finish_non_exhaustive()
    }
}

impl<'a> SaliencyBatches<'a> {
    /// `classes`: one per image of the split, in its order (the predicted class, or the one a
    /// person asks about).
    pub fn new(model: &'a Backbone, split: &SplitData, settings: &RunSettings, classes: &'a [u32]) -> Result<Self> {
        if classes.len() != split.labels.len() {
            return Err(Error::Config(format!(
                "saliency: {} classes for {} images; give one per image",
                classes.len(),
                split.labels.len()
            )));
        }
        let device = model.params().device().clone();
        let feed = DeviceBatches::new(batches(split.cache.clone(), split.labels.clone(), eval_loader(settings))?, &device);
        Ok(Self { model, feed, classes })
    }

    /// The next batch's crops and maps; `None` after the last.
    pub fn next_batch(&mut self) -> Result<Option<SaliencyBatch>> {
        let Some(batch) = self.feed.take()? else { return Ok(None) };
        let classes: Vec<u32> = batch.indices.iter().map(|&index| self.classes[index]).collect();
        let maps = self.model.grad_cam(&batch.images, &classes)?;
        let (_, rows, columns) = maps.dims3()?;
        let (_, _, height, width) = batch.images.dims4()?;
        let maps = maps.unsqueeze(1)?.upsample_bilinear2d(height, width, false)?.squeeze(1)?;
        self.feed.prefetch()?;
        Ok(Some(SaliencyBatch {
            indices: batch.indices,
            crops: batch.images.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            maps: maps.to_device(&Device::Cpu)?,
            grid: (rows, columns),
        }))
    }
}
