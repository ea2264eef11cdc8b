//! Quantisation of `f32` values to ggml blocks (the inverse direction of
//! [`super::dequant`]), for weights trained here that are to be multiplied
//! by the 8-bit kernels ([`crate::panel::PanelMatrix::from_gguf_q8`]).

use super::error::GgufError;

/// Elements per Q8_0 and Q4_1 block.
const QK: usize = 32;

/// Quantises `values` to ggml's Q8_0 blocks (34 bytes per 32 values), as
/// ggml's reference quantiser `quantize_row_q8_0_ref` does: per block
/// `d = max|x| / 127`, codes `q = round(x / d)` (half away from zero, with
/// `1/d` computed in f32 and the codes from the unrounded `d`), then `d`
/// stored as IEEE binary16. Every value comes back from
/// [`super::dequantize`] within `d/2` plus the rounding of `d` to binary16.
///
/// # Errors
/// [`GgufError::Length`] when `values.len()` is not a multiple of 32, or a
/// value is not finite.
///
/// # Examples
/// ```
/// use lastmile_core::gguf::{GgmlType, dequantize, quantize_q8_0};
/// let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
/// let blocks = quantize_q8_0(&x)?;
/// assert_eq!(blocks.len(), 34);
/// let back = dequantize(GgmlType::Q8_0, &blocks, 32)?;
/// assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() <= 16.0 / 254.0 + 1e-3));
/// # Ok::<(), lastmile_core::gguf::GgufError>(())
/// ```
pub fn quantize_q8_0(values: &[f32]) -> Result<Vec<u8>, GgufError> {
    check_quantisable(values, "Q8_0")?;
    let mut out = Vec::with_capacity(values.len() / QK * (2 + QK));
    for block in values.chunks_exact(QK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(half::f16::from_f32(d).to_bits().to_le_bytes());
        // |x·id| ≤ 127 (up to rounding, clamped), so the cast is exact.
        out.extend(
            block
                .iter()
                .map(|x| (x * id).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    Ok(out)
}

/// Quantises `values` to ggml's Q4_1 blocks (20 bytes per 32 values), as
/// ggml's reference quantiser `quantize_row_q4_1_ref` does: per block the
/// minimum `m` and `d = (max − m) / 15`, codes
/// `q = min(15, trunc((x − m)·(1/d) + 0.5))` (with `1/d` in f32 from the
/// unrounded `d`), `d` and `m` stored as IEEE binary16, the codes of
/// elements `i` and `i + 16` in the low and high half of byte `i`. Every
/// value comes back from [`super::dequantize`] within `d/2` plus the
/// rounding of `d` and `m` to binary16: 4.6 bits a weight instead of Q8_0's
/// 8.5, for matrices whose products are bound by reading them (a small
/// draft model's step).
///
/// # Errors
/// [`GgufError::Length`] when `values.len()` is not a multiple of 32, or a
/// value is not finite.
///
/// # Examples
/// ```
/// use lastmile_core::gguf::{GgmlType, dequantize, quantize_q4_1};
/// let x: Vec<f32> = (0..32).map(|i| i as f32 / 2.0).collect();
/// let blocks = quantize_q4_1(&x)?;
/// assert_eq!(blocks.len(), 20);
/// let back = dequantize(GgmlType::Q4_1, &blocks, 32)?;
/// let d = 15.5 / 15.0;
/// assert!(x.iter().zip(&back).all(|(a, b)| (a - b).abs() <= d / 2.0 + 1e-2));
/// # Ok::<(), lastmile_core::gguf::GgufError>(())
/// ```
pub fn quantize_q4_1(values: &[f32]) -> Result<Vec<u8>, GgufError> {
    check_quantisable(values, "Q4_1")?;
    let mut out = Vec::with_capacity(values.len() / QK * (4 + QK / 2));
    for block in values.chunks_exact(QK) {
        let (min, max) = block
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let d = (max - min) / 15.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend(half::f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(half::f16::from_f32(min).to_bits().to_le_bytes());
        // (x − min)·id lies in [0, 15] up to rounding; the cast truncates
        // as ggml's does and saturates the rest.
        let code = |x: f32| (((x - min) * id + 0.5) as u8).min(15);
        let (low, high) = block.split_at(QK / 2);
        out.extend(
            low.iter()
                .zip(high)
                .map(|(a, b)| code(*a) | (code(*b) << 4)),
        );
    }
    Ok(out)
}

/// Checks that `values` are whole 32-value blocks of finite values.
fn check_quantisable(values: &[f32], format: &str) -> Result<(), GgufError> {
    if !values.len().is_multiple_of(QK) {
        return Err(GgufError::Length {
            what: format!("values to quantise to {format}"),
            expected: format!("a multiple of {QK} values"),
            found: format!("{} values", values.len()),
        });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(GgufError::Length {
            what: format!("values to quantise to {format}"),
            expected: "finite values".to_owned(),
            found: format!("{} at index {i}", values[i]),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlType, dequantize};

    /// `x_i = 0.1·i − 1.6`, quantised by the `gguf` Python package 0.19.0
    /// (`gguf.quants.quantize(x, GGMLQuantizationType.Q8_0)`), an
    /// implementation independent of this one.
    const PY_Q8_0: &str = "732281899199a1a9b1b9c0c8d0d8e0e8f0f8000810182028303840474f575f676f77";

    #[test]
    fn matches_the_gguf_package() {
        let x: Vec<f32> = (0..32).map(|i| 0.1 * i as f32 - 1.6).collect();
        let hex: String = quantize_q8_0(&x)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, PY_Q8_0);
    }

    /// The same `x`, quantised to Q4_1 by the same package
    /// (`GGMLQuantizationType.Q4_1`).
    const PY_Q4_1: &str = "9d3266be80809191a2a2b3b3c4c4d5d5e6e6f7f7";

    #[test]
    fn q4_1_matches_the_gguf_package() {
        let x: Vec<f32> = (0..32).map(|i| 0.1 * i as f32 - 1.6).collect();
        let hex: String = quantize_q4_1(&x)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, PY_Q4_1);
    }

    #[test]
    fn q4_1_round_trip_error_is_half_a_step() {
        let x: Vec<f32> = (0..32 * 50)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0 + (i / 32) as f32 * 0.3)
            .collect();
        let back = dequantize(GgmlType::Q4_1, &quantize_q4_1(&x).unwrap(), x.len()).unwrap();
        for (bx, bb) in x.chunks(32).zip(back.chunks(32)) {
            let (lo, hi) = bx
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
            let d = (hi - lo) / 15.0;
            // d/2 from the code; 15·|Δd| + |Δm| from the binary16 scale and minimum.
            let tol = d / 2.0 + 15.0 * d / 2048.0 + lo.abs() / 2048.0;
            for (a, b) in bx.iter().zip(bb) {
                assert!((a - b).abs() <= tol, "{a} vs {b}, tolerance {tol}");
            }
        }
        // A constant block comes back exactly (d = 0).
        let flat = dequantize(GgmlType::Q4_1, &quantize_q4_1(&[0.5; 32]).unwrap(), 32).unwrap();
        assert_eq!(flat, vec![0.5; 32]);
    }

    #[test]
    fn round_trip_error_is_half_a_step() {
        let x: Vec<f32> = (0..32 * 50)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0 + (i / 32) as f32 * 0.3)
            .collect();
        let back = dequantize(GgmlType::Q8_0, &quantize_q8_0(&x).unwrap(), x.len()).unwrap();
        for (bx, bb) in x.chunks(32).zip(back.chunks(32)) {
            let d = bx.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            // d/2 from the code, 127·|Δd| ≤ 127·d·2⁻¹¹ from the binary16 scale.
            let tol = d / 2.0 + 127.0 * d / 2048.0;
            for (a, b) in bx.iter().zip(bb) {
                assert!((a - b).abs() <= tol, "{a} vs {b}, tolerance {tol}");
            }
        }
    }

    #[test]
    fn rejects_partial_blocks_and_non_finite_values() {
        assert!(quantize_q8_0(&[0.0; 31]).is_err());
        let mut x = [0.0; 32];
        x[5] = f32::NAN;
        assert!(quantize_q8_0(&x).is_err());
        assert_eq!(quantize_q8_0(&[0.0; 32]).unwrap()[..2], [0, 0]);
        assert!(quantize_q4_1(&[0.0; 33]).is_err());
        assert!(quantize_q4_1(&x).is_err());
        x[5] = f32::INFINITY;
        assert!(quantize_q4_1(&x).is_err());
    }
}
