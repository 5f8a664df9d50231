//! Test-time augmentation: the views of each centre crop whose logits are averaged (a named
//! option of `predict`; the study and rank's evaluation see the crop alone, as the reference).

use candle_core::{D, Tensor};

use crate::error::{Error, Result};

/// Which views of each crop a prediction averages the logits over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Views {
    /// The centre crop alone (the reference's evaluation).
    #[default]
    Crop,
    /// The crop and its mirror image (left and right swapped).
    Flip,
    /// The crop's eight rotations by quarter turns and their mirror images, for images with no
    /// up or left (dermoscopy, histopathology).
    Dihedral,
}

impl Views {
    /// How many views each crop gives.
    pub fn count(self) -> usize {
        match self {
            Views::Crop => 1,
            Views::Flip => 2,
            Views::Dihedral => 8,
        }
    }

    /// The views of a batch of crops (B, C, H, W), the crop itself first; a quarter turn needs
    /// square crops.
    pub fn of(self, crops: &Tensor) -> Result<Vec<Tensor>> {
        let (_, _, height, width) = crops.dims4()?;
        match self {
            Views::Crop => Ok(vec![crops.clone()]),
            Views::Flip => Ok(vec![crops.clone(), mirrored(crops)?]),
            Views::Dihedral => {
                if height != width {
                    return Err(Error::Config(format!(
                        "--tta dihedral turns the crops by quarter turns; a {height} x {width} crop is not square"
                    )));
                }
                let mut views = Vec::with_capacity(8);
                let mut turned = crops.clone();
                for _ in 0..4 {
                    views.push(mirrored(&turned)?);
                    views.push(turned.clone());
                    turned = quarter_turn(&turned)?;
                }
                // The crop itself first.
                views.swap(0, 1);
                Ok(views)
            }
        }
    }
}

/// Left and right swapped: the columns in reverse order.
fn mirrored(crops: &Tensor) -> Result<Tensor> {
    let width = crops.dim(D::Minus1)?;
    let reversed: Vec<u32> = (0..width as u32).rev().collect();
    Ok(crops.index_select(&Tensor::new(reversed, crops.device())?, 3)?)
}

/// A quarter turn: rows become columns, mirrored.
fn quarter_turn(crops: &Tensor) -> Result<Tensor> {
    mirrored(&crops.transpose(2, 3)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::Device;

    use super::*;

    /// A 2 x 2 crop [[a, b], [c, d]]: its mirror is [[b, a], [d, c]]; its eight dihedral views
    /// are the eight arrangements of the square's corners that keep neighbours neighbours.
    #[test]
    fn views_are_the_mirror_and_the_squares_symmetries() {
        let crop = Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &Device::Cpu).unwrap();
        let flat = |views: Vec<Tensor>| views.iter().map(|v| v.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>();
        assert_eq!(flat(Views::Flip.of(&crop).unwrap()), [vec![1.0, 2.0, 3.0, 4.0], vec![2.0, 1.0, 4.0, 3.0]]);
        let mut dihedral = flat(Views::Dihedral.of(&crop).unwrap());
        assert_eq!(dihedral[0], [1.0, 2.0, 3.0, 4.0]);
        dihedral.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let expected = [
            [1.0, 2.0, 3.0, 4.0], // itself
            [1.0, 3.0, 2.0, 4.0], // transposed
            [2.0, 1.0, 4.0, 3.0], // mirrored
            [2.0, 4.0, 1.0, 3.0], // a quarter turn
            [3.0, 1.0, 4.0, 2.0], // three quarters
            [3.0, 4.0, 1.0, 2.0], // upside down
            [4.0, 2.0, 3.0, 1.0], // the other diagonal
            [4.0, 3.0, 2.0, 1.0], // a half turn
        ];
        assert_eq!(dihedral, expected.map(|v| v.to_vec()));
        let wide = Tensor::zeros((1, 3, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(Views::Dihedral.of(&wide).unwrap_err().to_string().contains("not square"));
        assert_eq!(Views::Flip.of(&wide).unwrap().len(), 2);
    }
}
