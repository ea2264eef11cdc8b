//! A team of threads that stays together for a whole forward pass
//! ([`Team`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{PanelMatrix, Prepared};
use crate::error::{CoreError, Result};

/// Polls of an idle helper that only spin before it starts yielding its
/// core to the scheduler between polls (~20-50 µs: longer than the serial
/// work between two products of a pass).
const SPINS: u32 = 1 << 14;

/// Polls between two looks for rayon jobs by an idle helper.
const STEAL_EVERY: u32 = 16;

/// Tasks per thread a product is cut into. Two rather than the four of
/// [`super::pool::products`] (which hands its tasks to rayon): on a 2-vCPU AMD
/// EPYC (Zen 4) a one-token step of SmolLM2-135M took 2.7–7.0 % and an
/// 8-token pass 2.3–3.1 % less time in each of seven runs alternating the
/// settings (fewer tasks' set-up, prefetch warm-up and locks); one a
/// thread left no slack to balance (8 tokens 21 % slower), three, eight
/// or sixteen were 5–7 % slower at 8 tokens (`docs/benchmarks.md`).
const TASKS_PER_THREAD: usize = 2;

/// The calling thread and the helpers of one [`Team::run`].
///
/// A pass over a few tokens is ~150 products of a few tens of
/// microseconds each, with serial work between them. Handing each product
/// to rayon's pool costs a wake-up whenever the idle worker has gone to
/// sleep in between (rayon's workers sleep after ~32 `sched_yield`s),
/// and on a 2-core VM those hand-offs, futex waits and wakes took a
/// sixth of the threads' time in an 8-token pass (`docs/benchmarks.md`).
/// [`Team::run`] instead starts one helper per other worker of the pool
/// for the length of a closure; the helpers poll for work (spinning, then
/// yielding the core) and never sleep, and each product's panels are
/// claimed task by task from a shared counter by whoever is free, the
/// caller included. If a helper has not started (the pool is busy), the
/// caller does all the tasks itself, so the results never wait on it.
///
/// A product is published as an [`Arc`]ed job that owns its prepared
/// input and its outputs (behind a [`Mutex`] each), so the helpers
/// borrow nothing shorter-lived than the matrices: no unsafe code.
///
/// ```
/// use lastmile_core::panel::{PanelMatrix, Team};
/// let w = PanelMatrix::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2)?;
/// let y = Team::run(|team| team.matmul(&w, &[1.0, 1.0], 1))?;
/// assert_eq!(y, vec![3.0, 7.0, 11.0]);
/// # Ok::<(), lastmile_core::CoreError>(())
/// ```
pub struct Team<'t> {
    /// The product being computed (the latest published).
    job: Mutex<Option<Arc<Job<'t>>>>,
    /// Counts published jobs: a helper takes the job when it changes.
    epoch: AtomicUsize,
    /// Set when the closure of [`Team::run`] has returned.
    stop: AtomicBool,
    /// Threads of the team, the caller included.
    threads: usize,
}

impl<'t> Team<'t> {
    /// Runs `f` with a team of the current rayon pool's threads: the
    /// calling thread (moved onto the pool if it is not one of its
    /// workers) and a polling helper on each other worker, until `f`
    /// returns.
    ///
    /// ```
    /// use lastmile_core::panel::Team;
    /// let threads = Team::run(|team| team.threads());
    /// assert_eq!(threads, rayon::current_num_threads());
    /// ```
    pub fn run<R: Send>(f: impl FnOnce(&Team<'t>) -> R + Send) -> R {
        let team = Team {
            job: Mutex::new(None),
            epoch: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            threads: rayon::current_num_threads().max(1),
        };
        rayon::scope(|s| {
            for _ in 1..team.threads {
                s.spawn(|_| team.help());
            }
            // Stops the helpers however `f` ends: were it to panic, the
            // scope would otherwise wait for them forever.
            let _stop = StopOnDrop(&team.stop);
            f(&team)
        })
    }

    /// Threads of the team, the caller included.
    ///
    /// ```
    /// use lastmile_core::panel::Team;
    /// let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().map_err(|e| e.to_string())?;
    /// assert_eq!(pool.install(|| Team::run(|team| team.threads())), 3);
    /// # Ok::<(), String>(())
    /// ```
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// [`PanelMatrix::matmul`] on the team.
    ///
    /// ```
    /// use lastmile_core::panel::{PanelMatrix, Team};
    /// let w = PanelMatrix::from_f32(&[1.0, 0.0, 0.0, 1.0], 2, 2)?; // the identity
    /// let y = Team::run(|team| team.matmul(&w, &[1.0, 2.0, 3.0, 4.0], 2))?;
    /// assert_eq!(y, vec![1.0, 2.0, 3.0, 4.0]);
    /// # Ok::<(), lastmile_core::CoreError>(())
    /// ```
    ///
    /// # Errors
    /// As [`PanelMatrix::matmul`].
    pub fn matmul(&self, m: &'t PanelMatrix, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut ys = self.matmul_each(&[m], x, rows)?;
        ys.pop().ok_or_else(|| CoreError::ShapeMismatch {
            what: "team product".to_owned(),
            expected: "one product".to_owned(),
            found: vec![0],
        })
    }

    /// [`PanelMatrix::matmul_each`] on the team: `x` prepared once, then
    /// every matrix's panels shared out as one job.
    ///
    /// ```
    /// use lastmile_core::panel::{PanelMatrix, Team};
    /// let a = PanelMatrix::from_f32(&[1.0, 0.0, 0.0, 1.0], 2, 2)?;
    /// let b = PanelMatrix::from_f32(&[1.0, 1.0], 1, 2)?;
    /// let ys = Team::run(|team| team.matmul_each(&[&a, &b], &[2.0, 3.0], 1))?;
    /// assert_eq!(ys, vec![vec![2.0, 3.0], vec![5.0]]);
    /// # Ok::<(), lastmile_core::CoreError>(())
    /// ```
    ///
    /// # Errors
    /// As [`PanelMatrix::matmul_each`]; [`CoreError::WorkerPanicked`] if a
    /// helper panicked in the kernel.
    pub fn matmul_each(
        &self,
        matrices: &[&'t PanelMatrix],
        x: &[f32],
        rows: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.publish(matrices, x, rows, None)
    }

    /// Prepares `x`, shares the products' tasks out and waits for them;
    /// with `zip`, the tasks cover the first matrix's panels and each
    /// also computes the second's (see [`Team::matmul_zip`]).
    fn publish(
        &self,
        matrices: &[&'t PanelMatrix],
        x: &[f32],
        rows: usize,
        zip: Option<Combine>,
    ) -> Result<Vec<Vec<f32>>> {
        super::pool::check_inputs(matrices, x, rows)?;
        let simd = true;
        let mut prepared = Prepared::default();
        for m in matrices {
            m.prepare(x, rows, simd, &mut prepared);
        }
        let mut tasks = Vec::new();
        // A zipped pair is one product's tasks, each twice the work.
        let sharing = if zip.is_some() {
            &matrices[..1]
        } else {
            matrices
        };
        let total: usize = matrices.iter().map(|m| m.layout().0).sum();
        let per_task = total.div_ceil(TASKS_PER_THREAD * self.threads).max(2);
        for (i, m) in sharing.iter().enumerate() {
            let (panels, width) = m.layout();
            for first in (0..panels).step_by(per_task) {
                tasks.push(Task {
                    matrix: i,
                    first,
                    count: (panels - first).min(per_task),
                    width,
                });
            }
        }
        let job = Arc::new(Job {
            outputs: sharing
                .iter()
                .map(|m| Mutex::new(vec![0.0; rows * m.out]))
                .collect(),
            zip,
            matrices: matrices.to_vec(),
            prepared,
            rows,
            simd,
            tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        });
        if self.threads > 1 {
            *self.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&job));
            self.epoch.fetch_add(1, Ordering::Release);
        }
        job.work();
        while job.done.load(Ordering::Acquire) < job.tasks.len() {
            if job.failed.load(Ordering::Acquire) {
                return Err(CoreError::WorkerPanicked("a panel product".to_owned()));
            }
            std::hint::spin_loop();
        }
        Ok(job
            .outputs
            .iter()
            .map(|y| std::mem::take(&mut *y.lock().unwrap_or_else(PoisonError::into_inner)))
            .collect())
    }

    /// The products `a·x` and `b·x` of two matrices of the same shape,
    /// zipped element by element: each task computes the same panels of
    /// both and calls `combine(ya, yb)` on them (`ya` becomes the result)
    /// before writing them out, so the combination runs on every thread of
    /// the team, on values still in L1, and `b`'s product is never
    /// written. A Llama block's SwiGLU gate is this with
    /// `combine = |g, u| g ← SiLU(g)·u` (on SmolLM2-135M the gate, run
    /// alone on the caller, was ~4 % of an 8-token pass, measured in
    /// `docs/benchmarks.md`). `combine` must work element by element (it
    /// sees a task's columns of every row, in panels); the result is then
    /// bit-identical to combining the two whole products.
    ///
    /// ```
    /// use lastmile_core::panel::{PanelMatrix, Team};
    /// let a = PanelMatrix::from_f32(&[1.0, 0.0, 0.0, 1.0], 2, 2)?; // the identity
    /// let b = PanelMatrix::from_f32(&[2.0, 0.0, 0.0, 3.0], 2, 2)?;
    /// let times = |ya: &mut [f32], yb: &[f32]| ya.iter_mut().zip(yb).for_each(|(a, b)| *a *= b);
    /// let y = Team::run(|team| team.matmul_zip(&a, &b, &[1.0, 2.0], 1, times))?;
    /// assert_eq!(y, vec![1.0 * 2.0, 2.0 * 6.0]);
    /// # Ok::<(), lastmile_core::CoreError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Team::matmul_each`]; [`CoreError::ShapeMismatch`] when `a` and
    /// `b` differ in shape or in how they are stored.
    pub fn matmul_zip(
        &self,
        a: &'t PanelMatrix,
        b: &'t PanelMatrix,
        x: &[f32],
        rows: usize,
        combine: Combine,
    ) -> Result<Vec<f32>> {
        if (a.out, a.inp, a.layout()) != (b.out, b.inp, b.layout())
            || a.quantises_activations() != b.quantises_activations()
        {
            return Err(CoreError::ShapeMismatch {
                what: "zipped team products".to_owned(),
                expected: format!(
                    "two matrices of the same shape and storage ({} × {})",
                    a.out, a.inp
                ),
                found: vec![b.out, b.inp],
            });
        }
        let mut ys = self.publish(&[a, b], x, rows, Some(combine))?;
        ys.truncate(1);
        ys.pop().ok_or_else(|| CoreError::ShapeMismatch {
            what: "zipped team products".to_owned(),
            expected: "one product".to_owned(),
            found: vec![0],
        })
    }

    /// A helper's loop: take each newly published job and work on it
    /// until [`Team::run`]'s closure returns.
    fn help(&self) {
        let mut seen = 0;
        let mut idle = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                idle = 0;
                let job = self
                    .job
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if let Some(job) = job {
                    job.work();
                }
            } else {
                idle = idle.saturating_add(1);
                // Between products the caller may split other work over
                // rayon's pool (a pass's attention): take it from there.
                if idle.is_multiple_of(STEAL_EVERY) {
                    let _ = rayon::yield_now();
                }
                if idle < SPINS {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// How [`Team::matmul_zip`] combines a task's panels of its second
/// product (`yb`) into its first's (`ya`), element by element.
///
/// ```
/// use lastmile_core::panel::Combine;
/// // A closure that captures nothing is a function pointer.
/// let add: Combine = |ya, yb| ya.iter_mut().zip(yb).for_each(|(a, b)| *a += b);
/// let mut ya = [1.0, 2.0];
/// add(&mut ya, &[0.5, 0.5]);
/// assert_eq!(ya, [1.5, 2.5]);
/// ```
pub type Combine = fn(ya: &mut [f32], yb: &[f32]);

/// Panels `first .. first + count` of matrix `matrix` (outputs per panel
/// `width`).
struct Task {
    matrix: usize,
    first: usize,
    count: usize,
    width: usize,
}

/// One published product: its input, its tasks and its output rows.
struct Job<'t> {
    matrices: Vec<&'t PanelMatrix>,
    prepared: Prepared,
    rows: usize,
    simd: bool,
    tasks: Vec<Task>,
    /// Per matrix, its output `[rows, out]` (zipped: the first's only).
    outputs: Vec<Mutex<Vec<f32>>>,
    /// For [`Team::matmul_zip`]: how each task combines the second
    /// matrix's panels into the first's.
    zip: Option<Combine>,
    /// The next task to claim.
    next: AtomicUsize,
    /// Tasks finished.
    done: AtomicUsize,
    /// Set if a thread panicked in a task.
    failed: AtomicBool,
}

impl Job<'_> {
    /// Claims and computes tasks until none is left.
    fn work(&self) {
        let guard = FailOnPanic(&self.failed);
        SCRATCH.with_borrow_mut(|scratch| {
            while let Some(task) = self.tasks.get(self.next.fetch_add(1, Ordering::Relaxed)) {
                let m = self.matrices[task.matrix];
                let n = task.count * self.rows * task.width;
                let len = if self.zip.is_some() { 2 * n } else { n };
                if scratch.len() < len {
                    scratch.resize(len, 0.0);
                }
                // Every kernel stores each of its outputs, so the
                // thread's buffer is reused as it is, without zeroing.
                let (by_panel, second) = scratch[..len].split_at_mut(n);
                m.panels(task.first, by_panel, self.rows, &self.prepared, self.simd);
                if let (Some(combine), Some(b)) = (self.zip, self.matrices.get(1)) {
                    b.panels(task.first, second, self.rows, &self.prepared, self.simd);
                    combine(by_panel, second);
                }
                // One lock a task: its columns of every row, copied from L1.
                let mut y = self.outputs[task.matrix]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let at = task.first * task.width;
                match task.width {
                    16 => scatter::<16>(by_panel, &mut y, m.out, at),
                    8 => scatter::<8>(by_panel, &mut y, m.out, at),
                    _ => scatter_any(by_panel, &mut y, m.out, at, task.width),
                }
                drop(y);
                self.done.fetch_add(1, Ordering::Release);
            }
        });
        std::mem::forget(guard);
    }
}

thread_local! {
    /// Each thread's buffer for its tasks' panels (`[panel][rows][width]`).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copies panels `[panel][rows][W]` into columns `at..` of every row of
/// `y` (`[rows, out]`), the last panel cut at `out`. `W` known at compile
/// time turns each panel row's copy into a few vector moves instead of a
/// call to `memcpy` (~100 000 of them in an 8-token pass).
fn scatter<const W: usize>(by_panel: &[f32], y: &mut [f32], out: usize, at: usize) {
    let rows = y.len() / out;
    for (j, panel) in by_panel.chunks_exact(rows * W).enumerate() {
        let from = at + j * W;
        for (row, got) in y.chunks_exact_mut(out).zip(panel.as_chunks::<W>().0) {
            match row.get_mut(from..from + W) {
                Some(to) => to.copy_from_slice(got),
                None => {
                    let n = out.saturating_sub(from);
                    if let (Some(to), Some(got)) = (row.get_mut(from..), got.get(..n)) {
                        to.copy_from_slice(got);
                    }
                }
            }
        }
    }
}

/// [`scatter`] for a width known only at run time.
fn scatter_any(by_panel: &[f32], y: &mut [f32], out: usize, at: usize, width: usize) {
    let rows = y.len() / out;
    for (j, panel) in by_panel.chunks_exact(rows * width).enumerate() {
        let from = at + j * width;
        let n = width.min(out.saturating_sub(from));
        for (row, got) in y.chunks_exact_mut(out).zip(panel.chunks_exact(width)) {
            row[from..from + n].copy_from_slice(&got[..n]);
        }
    }
}

/// Sets the helpers' stop flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Sets its flag when dropped, which [`Job::work`] lets happen only by
/// unwinding from a panic.
struct FailOnPanic<'a>(&'a AtomicBool);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}
