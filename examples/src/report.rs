//! Output helpers: progress bars, aligned tables and CSV files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar with lastmile's style; hidden automatically when stderr is not a terminal.
pub fn progress_bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

/// Renders rows as an aligned plain-text table with a header rule.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}", w = *w))
            .collect();
        let _ = writeln!(out, "  {}", parts.join("  "));
    };
    line(header.to_vec(), &mut out);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "  {}", rule.join("  "));
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Cargo's target directory of the running example: `$CARGO_TARGET_DIR` when
/// set, else the directory the executable was built into
/// (`<target>/<profile>/examples/<name>`), else `target`.
///
/// ```
/// let dir = lastmile_examples::report::target_dir();
/// assert!(!dir.as_os_str().is_empty());
/// ```
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            // <target>/<profile>/examples/<name>: the target dir is three levels up.
            let examples = exe.parent()?;
            (examples.file_name()? == "examples")
                .then(|| examples.parent()?.parent().map(Path::to_path_buf))
                .flatten()
        })
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Directory where examples write CSV files and plots: `$LASTMILE_OUT`, or
/// `lastmile-out` in cargo's target directory ([`target_dir`]).
pub fn output_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("LASTMILE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("lastmile-out"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes a CSV file (cells are written as given; callers avoid commas in cells).
pub fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut text = header.join(",");
    text.push('\n');
    for row in rows {
        text.push_str(&row.join(","));
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The command-line flags of an example: `--name value` pairs and bare
/// switches, read in order.
///
/// ```
/// use lastmile_examples::report::Flags;
/// let mut flags = Flags::new(["--steps", "20", "--quick"].map(String::from));
/// let (mut steps, mut quick) = (0usize, false);
/// while let Some(flag) = flags.next_flag() {
///     match flag.as_str() {
///         "--steps" => steps = flags.value("--steps")?,
///         "--quick" => quick = true,
///         other => anyhow::bail!("unknown argument {other}"),
///     }
/// }
/// assert_eq!((steps, quick), (20, true));
/// assert!(Flags::new(["--steps".to_owned()]).value::<usize>("--steps").is_err());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct Flags {
    args: std::vec::IntoIter<String>,
}

impl Flags {
    /// The flags of this process (`std::env::args`, without the program name).
    pub fn from_env() -> Self {
        Self::new(std::env::args().skip(1))
    }

    /// Flags from any list of arguments.
    pub fn new(args: impl IntoIterator<Item = String>) -> Self {
        Self {
            args: args.into_iter().collect::<Vec<_>>().into_iter(),
        }
    }

    /// The next flag (or stray argument), if any.
    pub fn next_flag(&mut self) -> Option<String> {
        self.args.next()
    }

    /// The value after flag `name`, parsed.
    ///
    /// # Errors
    /// A missing value, or one that does not parse as `T`.
    pub fn value<T>(&mut self, name: &str) -> Result<T>
    where
        T: std::str::FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.args
            .next()
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| {
                format!(
                    "{name}: cannot parse the value as {}",
                    std::any::type_name::<T>()
                )
            })
    }
}
