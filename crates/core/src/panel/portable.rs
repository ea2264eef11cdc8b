//! The kernel for CPUs without AVX2: plain loops over the panel layout.

use super::{BLOCK, Exact, Job, PANEL};

/// Computes `job` into `out` (`[panel][rows][PANEL]`).
pub(super) fn panels(job: Job<'_>, out: &mut [f32]) {
    let Job {
        weights,
        inp,
        first,
        x,
        rows,
    } = job;
    for (j, out) in out.chunks_exact_mut(rows * PANEL).enumerate() {
        let p = first + j;
        for &(r0, n) in &x.blocks {
            let xb = &x.values[r0 * inp..(r0 + n) * inp];
            let mut acc = vec![[0.0f32; PANEL]; n];
            for k in 0..inp {
                let w = weights_at(weights, p, k, inp);
                for (a, &xv) in acc.iter_mut().zip(&xb[k * n..(k + 1) * n]) {
                    for (ac, wc) in a.iter_mut().zip(w) {
                        *ac += wc * xv;
                    }
                }
            }
            for (r, a) in acc.into_iter().enumerate() {
                out[(r0 + r) * PANEL..(r0 + r + 1) * PANEL].copy_from_slice(&a);
            }
        }
    }
}

fn weights_at(weights: Exact<'_>, p: usize, k: usize, inp: usize) -> [f32; PANEL] {
    let mut w = [0.0f32; PANEL];
    match weights {
        Exact::F32(v) => w.copy_from_slice(&v[(p * inp + k) * PANEL..(p * inp + k + 1) * PANEL]),
        Exact::Codes(c) => {
            let s = (p * (inp / BLOCK) + k / BLOCK) * PANEL;
            let q = &c.q[(p * inp + k) * PANEL..(p * inp + k + 1) * PANEL];
            for (i, wi) in w.iter_mut().enumerate() {
                let v = f32::from(q[i]) * c.scale[s + i];
                *wi = match &c.min {
                    Some(m) => v + m[s + i],
                    None => v,
                };
            }
        }
    }
    w
}
