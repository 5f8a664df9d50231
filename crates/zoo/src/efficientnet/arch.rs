//! timm's block strings (`_efficientnet_builder.py`): each generator's `arch_def`, verbatim, and
//! their decoding into one spec per block, with the depth multiplier applied as timm's
//! `_scale_stage_depth` applies it.

use crate::error::{Error, Result};

/// The block types this zoo builds (timm's leading string of a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockType {
    /// `ds`: depthwise k x k, (SE), pointwise linear.
    DepthwiseSeparable,
    /// `ir`: pointwise expansion, depthwise k x k, (SE), pointwise linear (MBConv).
    InvertedResidual,
    /// `er`: a full k x k expansion convolution, (SE), pointwise linear (FusedMBConv).
    EdgeResidual,
    /// `cn`: one k x k convolution with BatchNorm and activation.
    ConvBnAct,
}

/// One decoded block string, before its stage's depth scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BlockArgs {
    pub kind: BlockType,
    pub repeats: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Expansion ratio (`e`, 1 where a type has none).
    pub exp_ratio: f64,
    /// Output channels before the width multiplier (`c`).
    pub out_channels: usize,
    /// Squeeze-excitation ratio relative to the block input (`se`), 0 for none.
    pub se_ratio: f64,
    /// `skip` (true) or `noskip` (false) where the string forces one.
    pub skip: Option<bool>,
}

/// `_gen_mobilenet_v2`.
pub(super) const MOBILENET_V2: &[&str] = &[
    "ds_r1_k3_s1_c16",
    "ir_r2_k3_s2_e6_c24",
    "ir_r3_k3_s2_e6_c32",
    "ir_r4_k3_s2_e6_c64",
    "ir_r3_k3_s1_e6_c96",
    "ir_r3_k3_s2_e6_c160",
    "ir_r1_k3_s1_e6_c320",
];

/// `_gen_efficientnet` (B0, scaled for B1-B8 and L2).
pub(super) const EFFICIENTNET: &[&str] = &[
    "ds_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k3_s2_e6_c24_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25",
    "ir_r3_k5_s1_e6_c112_se0.25",
    "ir_r4_k5_s2_e6_c192_se0.25",
    "ir_r1_k3_s1_e6_c320_se0.25",
];

/// `_gen_efficientnetv2_base` (B0-B3).
pub(super) const EFFICIENTNETV2_BASE: &[&str] = &[
    "cn_r1_k3_s1_e1_c16_skip",
    "er_r2_k3_s2_e4_c32",
    "er_r2_k3_s2_e4_c48",
    "ir_r3_k3_s2_e4_c96_se0.25",
    "ir_r5_k3_s1_e6_c112_se0.25",
    "ir_r8_k3_s2_e6_c192_se0.25",
];

/// `_gen_efficientnetv2_s`; with `rw` its first and last stages are replaced.
pub(super) const EFFICIENTNETV2_S: &[&str] = &[
    "cn_r2_k3_s1_e1_c24_skip",
    "er_r4_k3_s2_e4_c48",
    "er_r4_k3_s2_e4_c64",
    "ir_r6_k3_s2_e4_c128_se0.25",
    "ir_r9_k3_s1_e6_c160_se0.25",
    "ir_r15_k3_s2_e6_c256_se0.25",
];
pub(super) const EFFICIENTNETV2_S_RW_FIRST: &str = "er_r2_k3_s1_e1_c24";
pub(super) const EFFICIENTNETV2_S_RW_LAST: &str = "ir_r15_k3_s2_e6_c272_se0.25";

/// `_gen_efficientnetv2_m`.
pub(super) const EFFICIENTNETV2_M: &[&str] = &[
    "cn_r3_k3_s1_e1_c24_skip",
    "er_r5_k3_s2_e4_c48",
    "er_r5_k3_s2_e4_c80",
    "ir_r7_k3_s2_e4_c160_se0.25",
    "ir_r14_k3_s1_e6_c176_se0.25",
    "ir_r18_k3_s2_e6_c304_se0.25",
    "ir_r5_k3_s1_e6_c512_se0.25",
];

/// `_gen_efficientnetv2_l`.
pub(super) const EFFICIENTNETV2_L: &[&str] = &[
    "cn_r4_k3_s1_e1_c32_skip",
    "er_r7_k3_s2_e4_c64",
    "er_r7_k3_s2_e4_c96",
    "ir_r10_k3_s2_e4_c192_se0.25",
    "ir_r19_k3_s1_e6_c224_se0.25",
    "ir_r25_k3_s2_e6_c384_se0.25",
    "ir_r7_k3_s1_e6_c640_se0.25",
];

/// `_gen_efficientnetv2_xl`.
pub(super) const EFFICIENTNETV2_XL: &[&str] = &[
    "cn_r4_k3_s1_e1_c32_skip",
    "er_r8_k3_s2_e4_c64",
    "er_r8_k3_s2_e4_c96",
    "ir_r16_k3_s2_e4_c192_se0.25",
    "ir_r24_k3_s1_e6_c256_se0.25",
    "ir_r32_k3_s2_e6_c512_se0.25",
    "ir_r8_k3_s1_e6_c640_se0.25",
];

/// timm's `_decode_block_str` for the options of the block types above.
pub(super) fn decode_block(text: &str) -> Result<BlockArgs> {
    let bad = |problem: String| Error::Config { source_name: text.to_string(), problem };
    let mut ops = text.split('_');
    let kind = match ops.next() {
        Some("ds") => BlockType::DepthwiseSeparable,
        Some("ir") => BlockType::InvertedResidual,
        Some("er") => BlockType::EdgeResidual,
        Some("cn") => BlockType::ConvBnAct,
        other => return Err(bad(format!("block type {other:?} is not one the zoo builds (ds, ir, er, cn)"))),
    };
    let mut args = BlockArgs { kind, repeats: 0, kernel: 0, stride: 0, exp_ratio: 1.0, out_channels: 0, se_ratio: 0.0, skip: None };
    for op in ops {
        match op {
            "skip" => args.skip = Some(true),
            "noskip" => args.skip = Some(false),
            _ => {
                // A key of letters, then its number (timm splits at the first digit).
                let split = op.find(|c: char| c.is_ascii_digit()).ok_or_else(|| bad(format!("option '{op}' has no value")))?;
                let (key, value) = op.split_at(split);
                let whole = || value.parse::<usize>().map_err(|_| bad(format!("option '{op}': '{value}' is not a whole number")));
                let number = || value.parse::<f64>().map_err(|_| bad(format!("option '{op}': '{value}' is not a number")));
                match key {
                    "r" => args.repeats = whole()?,
                    "k" => args.kernel = whole()?,
                    "s" => args.stride = whole()?,
                    "c" => args.out_channels = whole()?,
                    "e" => args.exp_ratio = number()?,
                    "se" => args.se_ratio = number()?,
                    _ => return Err(bad(format!("option '{op}' is not one the zoo builds"))),
                }
            }
        }
    }
    if args.repeats == 0 || args.kernel == 0 || args.stride == 0 || args.out_channels == 0 {
        return Err(bad("needs r, k, s and c, each at least 1".into()));
    }
    Ok(args)
}

/// A stage's blocks (one per repeat) after timm's `_scale_stage_depth` with `depth_trunc='ceil'`:
/// the stage's total repeats become ceil(total x multiplier), given out from the last block
/// string backwards, each at least 1.
pub(super) fn scale_stage(stage: &[BlockArgs], multiplier: f64) -> Vec<BlockArgs> {
    let mut remaining: usize = stage.iter().map(|b| b.repeats).sum();
    let mut remaining_scaled = (remaining as f64 * multiplier).ceil() as usize;
    let mut counts = vec![0; stage.len()];
    for (index, block) in stage.iter().enumerate().rev() {
        // round() of Python 3: halves to even.
        let share = (block.repeats as f64 / remaining as f64 * remaining_scaled as f64).round_ties_even() as usize;
        counts[index] = share.max(1);
        remaining -= block.repeats;
        remaining_scaled = remaining_scaled.saturating_sub(counts[index]);
    }
    stage.iter().zip(counts).flat_map(|(block, count)| std::iter::repeat_n(*block, count)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_strings_decode_as_timm() {
        let ir = decode_block("ir_r15_k3_s2_e6_c256_se0.25").unwrap();
        assert_eq!(
            ir,
            BlockArgs {
                kind: BlockType::InvertedResidual,
                repeats: 15,
                kernel: 3,
                stride: 2,
                exp_ratio: 6.0,
                out_channels: 256,
                se_ratio: 0.25,
                skip: None
            }
        );
        let cn = decode_block("cn_r2_k3_s1_e1_c24_skip").unwrap();
        assert_eq!((cn.kind, cn.skip, cn.exp_ratio), (BlockType::ConvBnAct, Some(true), 1.0));
        assert!(decode_block("uir_r1_a3_k5_s2_e4_c80").is_err());
        assert!(decode_block("ir_r1_k3.5_s2_e6_c24").is_err(), "mixed kernels are not built");
        assert!(decode_block("ir_k3_s2_e6_c24").is_err(), "no repeat count");
    }

    #[test]
    fn stage_depth_scales_as_timm() {
        // timm: _scale_stage_depth([a(r2), b(r3)], [2, 3], 1.4) -> ceil(7.0) = 7: b gets
        // round(3/5 * 7) = 4, a the remaining 3.
        let a = decode_block("ir_r2_k3_s1_e6_c24").unwrap();
        let b = decode_block("ir_r3_k5_s1_e6_c24").unwrap();
        let scaled = scale_stage(&[a, b], 1.4);
        assert_eq!(scaled.iter().filter(|x| x.kernel == 3).count(), 3);
        assert_eq!(scaled.iter().filter(|x| x.kernel == 5).count(), 4);
        // One string: ceil(15 x 0.9) = 14; ceil(1 x 0.34) = 1.
        let last = decode_block(EFFICIENTNETV2_S[5]).unwrap();
        assert_eq!(scale_stage(&[last], 0.9).len(), 14);
        assert_eq!(scale_stage(&[decode_block(EFFICIENTNETV2_BASE[0]).unwrap()], 0.34).len(), 1);
    }
}
