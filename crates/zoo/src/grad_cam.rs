//! Grad-CAM (Selvaraju et al. 2017): where in an image the evidence for a class lies. A target
//! layer's activations, each channel weighted by the class score's gradient averaged over the
//! positions, summed over the channels; the sum's positive part.
//!
//! The target layer per family: a ConvNet's final feature map as timm's `forward_features` ends
//! it (ResNet's layer4, as pytorch-grad-cam's recipe; DenseNet's norm5 after its ReLU, where the
//! recipe for torchvision's takes it before; EfficientNet's conv_head; ConvNeXt's last stage),
//! Swin's token grid after the final norm (the map its head's mean pool reads; pytorch-grad-cam's
//! example takes the last block's norm1 instead), and a ViT's last block's norm1 (the recipe,
//! `blocks[-1].norm1`: the final tokens of a ViT pooled by its class token pass no gradient to
//! its patches). For a network whose mean-pooled map feeds a linear classifier this is CAM (Zhou
//! et al. 2016) divided by the positions' count.

use candle_core::{D, DType, Tensor, Var};

use crate::backbone::Backbone;
use crate::entry::Architecture;
use crate::error::{Error, Result};

impl Backbone {
    /// Grad-CAM of each image's class, (B, h, w) in f32 on the target layer's grid (the patch
    /// grid for a ViT): neither normalised nor resized to the image. Eval mode (BatchNorm's
    /// running statistics), so each image's map is its own.
    pub fn grad_cam(&self, images: &Tensor, classes: &[u32]) -> Result<Tensor> {
        let (batch, _, height, width) = images.dims4()?;
        let num_classes = self.num_classes()?;
        if classes.len() != batch {
            return Err(self.problem(format!("Grad-CAM: {} classes for {batch} images; give one class per image", classes.len())));
        }
        if let Some(class) = classes.iter().find(|&&class| class as usize >= num_classes) {
            return Err(self.problem(format!("Grad-CAM: class {class} of a model with {num_classes} classes")));
        }
        let (target, logits) = match self.vit() {
            Some(vit) => {
                let (input, normed) = vit.last_block_norm1(&self.input(images)?, false)?;
                let target = Var::from_tensor(&normed.detach())?;
                let tokens = vit.feature_map_from_norm1(&input.detach(), target.as_tensor(), false)?;
                (target, vit.head(&tokens, false)?.1)
            }
            None => {
                let target = Var::from_tensor(&self.feature_map(images, false)?.detach())?;
                let logits = self.head(target.as_tensor(), false)?.1;
                (target, logits)
            }
        };
        let mut chosen = vec![0f32; batch * num_classes];
        for (image, &class) in classes.iter().enumerate() {
            chosen[image * num_classes + class as usize] = 1.0;
        }
        let chosen = Tensor::from_vec(chosen, (batch, num_classes), logits.device())?.to_dtype(logits.dtype())?;
        // The images' scores summed: each image's map depends on its own score alone in eval.
        let gradients = (logits * chosen)?.sum_all()?.backward()?;
        let gradient = gradients
            .get(target.as_tensor())
            .ok_or_else(|| self.problem("Grad-CAM: the class scores do not depend on the target layer".into()))?;
        let activations = self.channels_first(target.as_tensor(), height, width)?.to_dtype(DType::F32)?;
        let gradient = self.channels_first(gradient, height, width)?.to_dtype(DType::F32)?;
        let weights = gradient.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        Ok(activations.broadcast_mul(&weights)?.sum(1)?.relu()?)
    }

    /// The target layer's tensor as (B, C, h, w): a ViT's patch tokens on their grid (the class,
    /// distillation and register tokens left out), Swin's (B, h, w, C) grid transposed.
    fn channels_first(&self, target: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        Ok(match self.architecture() {
            Architecture::Vit(config) => {
                let (batch, tokens, dim) = target.dims3()?;
                let (rows, columns) = (height / config.patch_size, width / config.patch_size);
                let prefix = config.prefix_tokens();
                if tokens != prefix + rows * columns {
                    return Err(self.problem(format!(
                        "Grad-CAM: {tokens} tokens are not {prefix} prefix token(s) and a {rows} x {columns} patch grid"
                    )));
                }
                target.narrow(1, prefix, rows * columns)?.reshape((batch, rows, columns, dim))?.permute((0, 3, 1, 2))?
            }
            Architecture::Swin(_) => target.permute((0, 3, 1, 2))?,
            _ => target.clone(),
        })
    }

    fn problem(&self, problem: String) -> Error {
        Error::Config { source_name: self.name().to_string(), problem }
    }
}
