//! exp(x) for f32 in straight-line arithmetic the compiler vectorises: the softmax and GELU
//! passes call it once per element, and libm's `expf` is an opaque scalar call that keeps
//! those loops scalar (4.6% of a ViT-L forward pass on its own). Cephes' `expf` reduction and
//! polynomial: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by a degree-7 polynomial, 2^n put into
//! the exponent bits; relative error below 2 ulp.

use crate::elementwise::mul_add;

/// exp(x), for x in [-87.3, 88]; below, the smallest normal float's neighbourhood (~1.2e-38,
/// not 0 and never subnormal: where these passes use it, such a term is lost beside the others
/// anyway); above, exp(88).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HIGH is exact for |n| < 2^9.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer and puts it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let shifted = mul_add(x, LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add(-n, LN2_LOW, mul_add(-n, LN2_HIGH, x));
    let p = [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5].iter().fold(1.987_569_1e-4, |p, &c| mul_add(p, r, c));
    let e_r = mul_add(p, r * r, r + 1.0);
    // n (in [-126, 127]) as the low bits of `shifted`, moved into the exponent field.
    let two_to_n = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    e_r * two_to_n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64's exp over the domain, every 1/1024, and at its ends.
    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0f64;
        for i in -(87 * 1024)..=(88 * 1024) {
            let x = i as f32 / 1024.0;
            let exact = (x as f64).exp();
            let ulps = (exp(x) as f64 - exact).abs() / (exact as f32 * f32::EPSILON) as f64;
            worst = worst.max(ulps);
        }
        assert!(worst < 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!((exp(-87.3) as f64 / (-87.3f32 as f64).exp() - 1.0).abs() < 1e-6);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.3e-38 && exp(-1000.0).is_normal());
        assert!(exp(1000.0) == exp(88.0) && exp(88.0).is_finite());
    }
}
