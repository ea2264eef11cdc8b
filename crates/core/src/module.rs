//! Visiting and rewriting the named parameters of any burn [`Module`].
//!
//! Parameters are named by their dotted module path, as burn's own stores
//! name them: `fc1.weight`, `layers.3.ffn.up.bias`, and for a parameter with
//! an attached reparameterisation its nested parameters too
//! (`fc1.weight.adapter.inner.a`). A [`Selector`] picks them by exact name or
//! pattern; every pattern must match something, so a typo is an error, not a
//! silent no-op.
//!
//! Two choices are always explicit:
//!
//! - **which value** is read ([`ParamValue`]): the stored base, or the
//!   effective value after a reparameterisation (e.g. `W0 + ΔW` of an
//!   attached adapter). Rewriting always replaces the stored base and keeps
//!   any reparameterisation attached.
//! - **which layout** a weight matrix has ([`Layout`]): burn's `Linear`
//!   stores `[in, out]`; PEFT / Hugging Face files and burn's convolutions
//!   store `[out, in, …]`. [`NamedParam::matrix`] and [`map_matrices`] always
//!   hand out the `[out, in]` matrix (a convolution kernel flattened to
//!   `C_out × C_in·k·k`) and put results back in the stored layout.
//!
//! ```
//! # #[cfg(feature = "flex")] {
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::Device;
//! use lastmile_core::module::{Layout, ParamValue, Selector, collect_params, map_matrices};
//!
//! #[derive(Module, Debug)]
//! struct Mlp { fc1: Linear, fc2: Linear }
//!
//! let d = Device::flex();
//! let mlp = Mlp { fc1: LinearConfig::new(4, 8).init(&d), fc2: LinearConfig::new(8, 2).init(&d) };
//! let weights = Selector::new(["fc*.weight"])?;
//! let found = collect_params(&mlp, &weights, ParamValue::Stored)?;
//! assert_eq!(found[0].path, "fc1.weight");
//! assert_eq!(found[0].matrix(Layout::InOut)?.dims(), [8, 4]); // [out, in]
//!
//! // Halve every weight, working on [out, in] matrices.
//! let halved = map_matrices(mlp, &weights, Layout::InOut, |_, w| Ok::<_, lastmile_core::CoreError>(w / 2.0))?;
//! assert_eq!(halved.fc2.weight.dims(), [8, 2]); // stored layout unchanged
//!
//! // A pattern that matches nothing is an error.
//! assert!(collect_params(&halved, &Selector::new(["fc3.weight"])?, ParamValue::Stored).is_err());
//! # }
//! # Ok::<(), lastmile_core::CoreError>(())
//! ```

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::error::{CoreError, Result};

/// How a weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[in, out]`: burn's `Linear`.
    InOut,
    /// `[out, in, …]`: PEFT / Hugging Face files, burn's convolutions
    /// (trailing kernel dimensions are flattened into `in`).
    OutIn,
}

/// Which value of a parameter to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamValue {
    /// The stored base value (what a checkpoint of the base model holds).
    Stored,
    /// The value the module computes with: the base with any attached
    /// reparameterisation applied (equal to `Stored` when there is none).
    /// Read from a materialised copy of the module (burn's
    /// `Module::materialize`), so a reparameterisation's own nested
    /// parameters are not visible in this view.
    Effective,
}

/// A set of parameter names and patterns.
///
/// A pattern is a dotted path whose segments are matched one to one; in a
/// segment `*` matches any run of characters (`fc*`, `*`), and a segment that
/// is exactly `**` matches any number of segments (including none).
///
/// ```
/// use lastmile_core::module::Selector;
/// let s = Selector::new(["layers.*.ffn.*", "head.weight"]).unwrap();
/// assert!(s.matches("layers.3.ffn.up"));
/// assert!(!s.matches("layers.3.attn.q"));
/// assert!(Selector::new(["**.bias"]).unwrap().matches("a.b.bias"));
/// assert!(Selector::new(["a..b"]).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    patterns: Vec<String>,
}

impl Selector {
    /// A selector of the given names or patterns.
    ///
    /// # Errors
    /// [`CoreError::Empty`] for no pattern; [`CoreError::NoMatch`] for a
    /// malformed pattern (empty, or with an empty segment), with the reason in
    /// place of the available names.
    pub fn new<I, S>(patterns: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let patterns: Vec<String> = patterns
            .into_iter()
            .map(|p| p.as_ref().to_owned())
            .collect();
        if patterns.is_empty() {
            return Err(CoreError::Empty {
                what: "parameter selector".to_owned(),
                min: 1,
            });
        }
        if let Some(bad) = patterns.iter().find(|p| p.split('.').any(str::is_empty)) {
            return Err(CoreError::NoMatch {
                pattern: bad.clone(),
                available: vec!["(malformed: empty path segment)".to_owned()],
            });
        }
        Ok(Self { patterns })
    }

    /// Every parameter.
    pub fn all() -> Self {
        Self {
            patterns: vec!["**".to_owned()],
        }
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `path` matches any pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.patterns.iter().any(|p| pattern_matches(p, path))
    }

    /// Errors for the first pattern that matched none of `paths`.
    fn check_all_used(&self, paths: &[String]) -> Result<()> {
        match self
            .patterns
            .iter()
            .find(|p| !paths.iter().any(|path| pattern_matches(p, path)))
        {
            None => Ok(()),
            Some(p) => Err(CoreError::NoMatch {
                pattern: p.clone(),
                available: paths.to_vec(),
            }),
        }
    }
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    let seg: Vec<&str> = path.split('.').collect();
    segments_match(&pat, &seg)
}

fn segments_match(pat: &[&str], seg: &[&str]) -> bool {
    match pat.split_first() {
        None => seg.is_empty(),
        Some((&"**", rest)) => (0..=seg.len()).any(|k| segments_match(rest, &seg[k..])),
        Some((p, rest)) => match seg.split_first() {
            Some((s, tail)) => glob(p.as_bytes(), s.as_bytes()) && segments_match(rest, tail),
            None => false,
        },
    }
}

/// `*`-glob within one segment.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| glob(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// One parameter, flattened, with its path and shape.
#[derive(Clone, Debug)]
pub struct NamedParam {
    /// Dotted module path, e.g. `layers.0.ffn.up.weight`.
    pub path: String,
    /// The parameter's shape as stored.
    pub shape: Vec<usize>,
    /// The value (stored or effective, as asked), flattened row-major.
    pub value: Tensor<1>,
}

impl NamedParam {
    /// The parameter as an `[out, in]` matrix, given how it is stored.
    ///
    /// `InOut` needs a 2-D parameter and transposes it; `OutIn` takes a
    /// parameter of rank ≥ 2 and flattens everything after the first axis.
    ///
    /// # Errors
    /// [`CoreError::ShapeMismatch`] for a rank the layout cannot hold.
    pub fn matrix(&self, layout: Layout) -> Result<Tensor<2>> {
        let [rows, cols] = matrix_dims(&self.path, &self.shape, layout)?;
        let stored = self.value.clone();
        Ok(match layout {
            Layout::InOut => stored.reshape([cols, rows]).transpose(),
            Layout::OutIn => stored.reshape([rows, cols]),
        })
    }
}

/// The `[out, in]` dims of a parameter stored as `layout`.
fn matrix_dims(path: &str, shape: &[usize], layout: Layout) -> Result<[usize; 2]> {
    match (layout, shape) {
        (Layout::InOut, [d_in, d_out]) => Ok([*d_out, *d_in]),
        (Layout::OutIn, [d_out, rest @ ..]) if !rest.is_empty() => {
            Ok([*d_out, rest.iter().product()])
        }
        (Layout::InOut, _) => Err(CoreError::shape(
            path,
            "a 2-D [in, out] weight (Layout::InOut)",
            shape,
        )),
        (Layout::OutIn, _) => Err(CoreError::shape(
            path,
            "a weight of rank >= 2 stored [out, in, ...] (Layout::OutIn)",
            shape,
        )),
    }
}

/// Every float parameter of `module`: its path and shape, in traversal order.
///
/// ```
/// # #[cfg(feature = "flex")] {
/// use burn::nn::LinearConfig;
/// use burn::tensor::Device;
/// let lin = LinearConfig::new(3, 2).init(&Device::flex());
/// let names: Vec<String> = lastmile_core::module::list_params(&lin).into_iter().map(|(p, _)| p).collect();
/// assert_eq!(names, ["weight", "bias"]);
/// # }
/// ```
pub fn list_params<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut lister =
        Walk::new(|path: &str, param: &dyn ParamView| vec![(path.to_owned(), param.shape())]);
    module.visit(&mut lister);
    lister.found
}

/// Reads the parameters `selector` picks, as `value` says.
///
/// # Errors
/// [`CoreError::NoMatch`] for a pattern that matches no parameter.
pub fn collect_params<M: Module>(
    module: &M,
    selector: &Selector,
    value: ParamValue,
) -> Result<Vec<NamedParam>> {
    let mut paths = Vec::new();
    let mut walk = Walk::new(|path: &str, param: &dyn ParamView| {
        paths.push(path.to_owned());
        if selector.matches(path) {
            vec![NamedParam {
                path: path.to_owned(),
                shape: param.shape(),
                value: param.flat(),
            }]
        } else {
            Vec::new()
        }
    });
    // burn's visitors see a parameter without its reparameterisation (which
    // is visited as a nested module), so the effective view walks a
    // materialised copy.
    match value {
        ParamValue::Stored => module.visit(&mut walk),
        ParamValue::Effective => module.clone().materialize().visit(&mut walk),
    }
    let found = walk.found;
    selector.check_all_used(&paths)?;
    Ok(found)
}

/// Rewrites the stored value of every parameter `selector` picks with
/// `f(param) → new flat value` (same element count). Reparameterisations
/// stay attached; gradients tracking is kept as it was.
///
/// # Errors
/// [`CoreError::NoMatch`] for a pattern that matches no parameter,
/// [`CoreError::ShapeMismatch`] when `f` returns the wrong element count, or
/// the first error `f` returns. On error the module is dropped: nothing is
/// half-applied.
pub fn map_params<M, E, F>(module: M, selector: &Selector, f: F) -> std::result::Result<M, E>
where
    M: Module,
    E: From<CoreError>,
    F: FnMut(&NamedParam) -> std::result::Result<Tensor<1>, E>,
{
    let mut mapper = Rewrite {
        path: Vec::new(),
        seen: Vec::new(),
        selector,
        f,
        error: None,
    };
    let module = module.map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(e);
    }
    selector.check_all_used(&mapper.seen)?;
    Ok(module)
}

/// [`map_params`] on `[out, in]` weight matrices: `f(path, W: [out, in])`
/// returns the new `[out, in]` matrix, which is put back in the stored
/// `layout`.
///
/// # Errors
/// As [`map_params`]; [`CoreError::ShapeMismatch`] for a selected parameter
/// the layout cannot hold, or a returned matrix of another shape.
pub fn map_matrices<M, E, F>(
    module: M,
    selector: &Selector,
    layout: Layout,
    mut f: F,
) -> std::result::Result<M, E>
where
    M: Module,
    E: From<CoreError>,
    F: FnMut(&str, Tensor<2>) -> std::result::Result<Tensor<2>, E>,
{
    map_params(module, selector, |p: &NamedParam| {
        let dims = matrix_dims(&p.path, &p.shape, layout)?;
        let new = f(&p.path, p.matrix(layout)?)?;
        if new.dims() != dims {
            return Err(CoreError::shape(
                &p.path,
                format!("the [out, in] shape {dims:?} the function was given"),
                &new.dims(),
            )
            .into());
        }
        let n = dims[0] * dims[1];
        Ok(match layout {
            Layout::InOut => new.transpose().reshape([n]),
            Layout::OutIn => new.reshape([n]),
        })
    })
}

/// Object-safe view of a `Param<Tensor<D>>` for the walker's callback.
trait ParamView {
    fn shape(&self) -> Vec<usize>;
    /// The stored value, flattened.
    fn flat(&self) -> Tensor<1>;
}

impl<const D: usize> ParamView for Param<Tensor<D>> {
    fn shape(&self) -> Vec<usize> {
        self.lazy_shape().to_vec()
    }

    fn flat(&self) -> Tensor<1> {
        let t = self.base();
        let n = t.dims().iter().product::<usize>();
        t.reshape([n])
    }
}

/// A visitor that keeps the dotted path and collects what `on_param` returns.
struct Walk<T, F> {
    path: Vec<String>,
    found: Vec<T>,
    on_param: F,
}

impl<T, F: FnMut(&str, &dyn ParamView) -> Vec<T>> Walk<T, F> {
    fn new(on_param: F) -> Self {
        Self {
            path: Vec::new(),
            found: Vec::new(),
            on_param,
        }
    }
}

impl<T, F: FnMut(&str, &dyn ParamView) -> Vec<T>> ModuleVisitor for Walk<T, F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join(".");
        let items = (self.on_param)(&path, param);
        self.found.extend(items);
    }
}

struct Rewrite<'s, E, F> {
    path: Vec<String>,
    seen: Vec<String>,
    selector: &'s Selector,
    f: F,
    error: Option<E>,
}

impl<E, F> ModuleMapper for Rewrite<'_, E, F>
where
    E: From<CoreError>,
    F: FnMut(&NamedParam) -> std::result::Result<Tensor<1>, E>,
{
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        self.seen.push(path.clone());
        if self.error.is_some() || !self.selector.matches(&path) {
            return param;
        }
        let shape = param.lazy_shape().to_vec();
        let named = NamedParam {
            value: param.flat(),
            path,
            shape,
        };
        match (self.f)(&named) {
            Ok(new) if new.dims()[0] == named.value.dims()[0] => {
                let dims: [usize; D] = param.dims();
                param.map(|_| new.reshape(dims))
            }
            Ok(new) => {
                self.error = Some(
                    CoreError::shape(
                        &named.path,
                        format!(
                            "{} elements, as stored {:?}",
                            named.value.dims()[0],
                            named.shape
                        ),
                        &new.dims(),
                    )
                    .into(),
                );
                param
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}
