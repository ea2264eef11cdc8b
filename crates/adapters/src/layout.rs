//! How a deployed weight matrix is laid out in memory.

/// How a deployed weight matrix is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum WeightLayout {
    /// `[out, in]` row-major (PyTorch, PEFT, this crate's adapters).
    #[default]
    OutIn,
    /// `[in, out]` row-major (burn's `Linear::weight`).
    InOut,
}

impl WeightLayout {
    /// Flat position of entry `(row, col)` of an `[out, in]` matrix stored in this layout.
    ///
    /// ```
    /// use lastmile_adapters::WeightLayout;
    /// assert_eq!(WeightLayout::OutIn.flat(1, 2, 3, 4), 6);
    /// assert_eq!(WeightLayout::InOut.flat(1, 2, 3, 4), 7);
    /// ```
    pub fn flat(self, row: usize, col: usize, d_out: usize, d_in: usize) -> usize {
        match self {
            Self::OutIn => row * d_in + col,
            Self::InOut => col * d_out + row,
        }
    }

    /// The stored shape of an `[out, in]` matrix.
    ///
    /// ```
    /// assert_eq!(lastmile_adapters::WeightLayout::InOut.shape(3, 4), [4, 3]);
    /// ```
    pub fn shape(self, d_out: usize, d_in: usize) -> [usize; 2] {
        match self {
            Self::OutIn => [d_out, d_in],
            Self::InOut => [d_in, d_out],
        }
    }
}
