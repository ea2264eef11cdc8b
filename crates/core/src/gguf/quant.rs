//! Quantisation of `f32` values to ggml blocks (the inverse direction of
//! [`super::dequant`]), for weights trained here that are to be multiplied
//! by the 8-bit kernels ([`crate::panel::PanelMatrix::from_gguf_q8`]).

use super::error::GgufError;

/// Elements per Q8_0 block.
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
    if !values.len().is_multiple_of(QK) {
        return Err(GgufError::Length {
            what: "values to quantise to Q8_0".to_owned(),
            expected: format!("a multiple of {QK} values"),
            found: format!("{} values", values.len()),
        });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(GgufError::Length {
            what: "values to quantise to Q8_0".to_owned(),
            expected: "finite values".to_owned(),
            found: format!("{} at index {i}", values[i]),
        });
    }
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
    }
}
