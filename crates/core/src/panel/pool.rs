//! Products handed to rayon's pool, one parallel section each
//! ([`PanelMatrix::matmul`] and [`PanelMatrix::matmul_each`]; a forward
//! pass shares its products out on a [`super::Team`] instead).

use rayon::prelude::*;

use super::{PanelMatrix, Prepared};
use crate::error::{CoreError, Result};

/// The products of `matrices` with the same `x` (`[rows, in]`): `x`
/// prepared once per kind of kernel, then every matrix's panels in one
/// parallel section, enough panels per task to amortise the hand-off and
/// enough tasks to share out (4 per thread).
pub(super) fn products(
    matrices: &[&PanelMatrix],
    x: &[f32],
    rows: usize,
    simd: bool,
) -> Result<Vec<Vec<f32>>> {
    check_inputs(matrices, x, rows)?;
    // Wake a worker before the serial preparation below (quantising the
    // rows), so that it is polling for work when the tasks arrive: rayon's
    // idle workers sleep after ~32 yields, and on a 2-core VM a sleeping
    // worker joined each product of an 8-token pass ~12 µs late (measured
    // in `docs/benchmarks.md`: the pass 12-14 % faster, one token no slower).
    rayon::spawn(|| {});
    let mut prepared = Prepared::default();
    for m in matrices {
        m.prepare(x, rows, simd, &mut prepared);
    }
    let layouts: Vec<(usize, usize)> = matrices.iter().map(|m| m.layout()).collect();
    let total: usize = layouts.iter().map(|(panels, _)| panels).sum();
    let per_task = total.div_ceil(4 * rayon::current_num_threads()).max(2);
    let mut ys: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0.0; rows * m.out]).collect();
    // Each task computes `per_task` panels and writes them into its columns
    // of every row of the product (the kernels write `[panel][rows][width]`
    // into a small buffer of the task's own).
    let mut tasks = Vec::new();
    for ((m, &(panels, width)), y) in matrices.iter().zip(&layouts).zip(&mut ys) {
        let mut columns: Vec<_> = y
            .chunks_mut(m.out)
            .map(|row| row.chunks_mut(per_task * width))
            .collect();
        for first in (0..panels).step_by(per_task) {
            let rows_out: Vec<&mut [f32]> = columns.iter_mut().filter_map(Iterator::next).collect();
            tasks.push((*m, first, (panels - first).min(per_task), width, rows_out));
        }
    }
    let prepared = &prepared;
    tasks
        .into_par_iter()
        .for_each(|(m, first, count, width, mut rows_out)| {
            let mut by_panel = vec![0.0f32; count * rows * width];
            m.panels(first, &mut by_panel, rows, prepared, simd);
            for (j, panel) in by_panel.chunks_exact(rows * width).enumerate() {
                for (out, got) in rows_out.iter_mut().zip(panel.chunks_exact(width)) {
                    let at = j * width;
                    let used = width.min(out.len().saturating_sub(at));
                    out[at..at + used].copy_from_slice(&got[..used]);
                }
            }
        });
    Ok(ys)
}

/// Checks that `x` holds `rows > 0` rows of every matrix's input.
pub(super) fn check_inputs(matrices: &[&PanelMatrix], x: &[f32], rows: usize) -> Result<()> {
    for m in matrices {
        if rows == 0 || x.len() != rows * m.inp {
            return Err(CoreError::ShapeMismatch {
                what: "panel matrix input".to_owned(),
                expected: format!("[rows, {}] with rows > 0", m.inp),
                found: vec![rows, x.len() / m.inp.max(1)],
            });
        }
    }
    Ok(())
}
