//! The f32 input rows of a product, grouped into register blocks.

use super::ROW_BLOCK;

/// The input rows in blocks of [`ROW_BLOCK`], 4, 2 and 1 rows, each block
/// transposed to `[in][block rows]` so that a kernel step reads one
/// contiguous group of values for all its rows.
pub(crate) struct Packed {
    pub(crate) values: Vec<f32>,
    /// `(first row, rows)` of each block; the block's values start at `first · in`.
    pub(crate) blocks: Vec<(usize, usize)>,
}

pub(crate) fn pack(x: &[f32], rows: usize, inp: usize) -> Packed {
    let mut values = vec![0.0f32; rows * inp];
    let mut blocks = Vec::new();
    let mut r = 0;
    while r < rows {
        let n = row_block(rows - r);
        for k in 0..inp {
            for j in 0..n {
                values[r * inp + k * n + j] = x[(r + j) * inp + k];
            }
        }
        blocks.push((r, n));
        r += n;
    }
    Packed { values, blocks }
}

/// Rows of the next register block when `left` rows remain.
fn row_block(left: usize) -> usize {
    match left {
        l if l >= ROW_BLOCK => ROW_BLOCK,
        l if l >= 4 => 4,
        l if l >= 2 => 2,
        _ => 1,
    }
}
