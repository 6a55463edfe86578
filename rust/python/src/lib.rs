//! `aesr1._core`: thin PyO3 bindings over aesr1-core.
//!
//! The Python modules `aesr1.rewards` and `aesr1.metrics` normalise their inputs (dtype,
//! contiguity, group labels) and call these functions with 1-D contiguous float64 arrays.
//! Heavy work runs detached from the interpreter. Core errors become `ValueError`; inputs of the
//! wrong type become `TypeError`. Every message names the offending argument.

// Every unsafe block states why it is sound, next to it.
#![warn(clippy::undocumented_unsafe_blocks)]

use aesr1_core as core;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PySequence, PyString};
use std::sync::{Arc, Mutex, OnceLock};

/// Core errors surface as `ValueError` with the core's message (which names the argument).
struct CoreError(core::Error);

impl From<core::Error> for CoreError {
    fn from(e: core::Error) -> Self {
        Self(e)
    }
}

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> Self {
        PyValueError::new_err(e.0.to_string())
    }
}

type CoreResult<T> = Result<T, CoreError>;

fn slice<'a>(arg: &str, a: &'a PyReadonlyArray1<'_, f64>) -> PyResult<&'a [f64]> {
    a.as_slice().map_err(|_| {
        PyValueError::new_err(format!("`{arg}` must be a contiguous 1-D float64 array"))
    })
}

fn vec_to_py(py: Python<'_>, v: Vec<f64>) -> Bound<'_, PyArray1<f64>> {
    PyArray1::from_vec(py, v)
}

fn parse_ties(ties: &str) -> PyResult<core::Ties> {
    match ties {
        "strict" => Ok(core::Ties::Strict),
        "half" => Ok(core::Ties::Half),
        other => Err(PyValueError::new_err(format!(
            "`ties` must be 'strict' or 'half', got {other:?}"
        ))),
    }
}

/// Builds the grouping from either a uniform group size or dense labels 0..G-1.
fn groups(
    n: usize,
    group_size: Option<usize>,
    labels: Option<&PyReadonlyArray1<'_, i64>>,
) -> PyResult<core::Groups> {
    match (group_size, labels) {
        (Some(size), None) => {
            if size == 0 || !n.is_multiple_of(size) {
                return Err(PyValueError::new_err(format!(
                    "`num_generations` ({size}) must be >= 1 and divide the number of completions ({n})"
                )));
            }
            Ok(core::Groups::uniform(n / size, size).map_err(CoreError)?)
        }
        (None, Some(labels)) => {
            let labels = labels
                .as_slice()
                .map_err(|_| PyValueError::new_err("`group_ids` must be contiguous"))?;
            let labels: Vec<usize> = labels
                .iter()
                .map(|&l| usize::try_from(l))
                .collect::<Result<_, _>>()
                .map_err(|_| PyValueError::new_err("`group_ids` codes must be non-negative"))?;
            Ok(core::Groups::from_labels(&labels).map_err(CoreError)?)
        }
        _ => Err(PyValueError::new_err(
            "give exactly one of `num_generations` and `group_ids`",
        )),
    }
}

/// A completion's text: borrowed from Python when it is valid Unicode, else a lossy copy.
enum Text {
    Borrowed(PyBackedStr),
    Lossy(String),
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Lossy(s) => s,
        }
    }
}

/// Extracts a sequence of `str`, naming the first element that is not one.
///
/// A `str` with lone surrogates (a bad decode upstream) has no UTF-8 form; it is read with each
/// surrogate as U+FFFD. Tags and numbers are ASCII, so the text parses as Python's `re` would
/// read the original, where a surrogate is just another non-tag character.
fn strings(arg: &str, seq: &Bound<'_, PyAny>) -> PyResult<Vec<Text>> {
    if seq.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "`{arg}` must be a sequence of str, not a single str"
        )));
    }
    let seq = seq.cast::<PySequence>().map_err(|_| {
        PyTypeError::new_err(format!(
            "`{arg}` must be a sequence of str, got {}",
            type_name(seq)
        ))
    })?;
    let n = seq.len()?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let item = seq.get_item(i)?;
        let s = item.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "`{arg}[{i}]` must be str, got {}",
                type_name(&item)
            ))
        })?;
        out.push(match s.extract::<PyBackedStr>() {
            Ok(text) => Text::Borrowed(text),
            Err(_) => Text::Lossy(s.to_string_lossy().into_owned()),
        });
    }
    Ok(out)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Φ, the standard normal distribution function, element-wise.
#[pyfunction]
fn ndtr<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f64>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let x = slice("x", &x)?;
    let out = detached(py, || x.iter().map(|&v| core::ndtr(v)).collect());
    Ok(vec_to_py(py, out))
}

/// Scores parsed from completions (NaN where unparseable).
#[pyfunction]
fn parse_scores<'py>(
    py: Python<'py>,
    completions: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let texts = strings("completions", completions)?;
    let out = detached(py, || core::parse_scores(&texts));
    Ok(vec_to_py(py, out))
}

/// Format reward per completion: 1.0 for `<think>…</think><answer>…</answer>`, else 0.0.
#[pyfunction]
fn format_rewards<'py>(
    py: Python<'py>,
    completions: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let texts = strings("completions", completions)?;
    let out = detached(py, || core::format_rewards(&texts));
    Ok(vec_to_py(py, out))
}

/// Scores and format rewards in one pass over the strings.
#[pyfunction]
fn parse_completions<'py>(
    py: Python<'py>,
    completions: &Bound<'py, PyAny>,
) -> PyResult<(Array<'py>, Array<'py>)> {
    let texts = strings("completions", completions)?;
    let (scores, format) = detached(py, || {
        rayon::join(
            || core::parse_scores(&texts),
            || core::format_rewards(&texts),
        )
    });
    Ok((vec_to_py(py, scores), vec_to_py(py, format)))
}

type Array<'py> = Bound<'py, PyArray1<f64>>;

/// The RAPO reward: (packed, num_unparseable), where `packed` holds total, rank, abs, binary,
/// format and advantages one after another (one array, so one allocation on the Python side).
#[pyfunction]
#[pyo3(signature = (pred, gt, group_size, group_ids, format, weights, sigma, eps, gamma, threshold, ties))]
#[allow(clippy::too_many_arguments)]
fn rapo<'py>(
    py: Python<'py>,
    pred: PyReadonlyArray1<'py, f64>,
    gt: PyReadonlyArray1<'py, f64>,
    group_size: Option<usize>,
    group_ids: Option<PyReadonlyArray1<'py, i64>>,
    format: Option<PyReadonlyArray1<'py, f64>>,
    weights: (f64, f64, f64, f64),
    sigma: f64,
    eps: f64,
    gamma: f64,
    threshold: f64,
    ties: &str,
) -> PyResult<(Array<'py>, usize)> {
    let (pred, gt) = (slice("pred", &pred)?, slice("gt", &gt)?);
    let groups = groups(pred.len(), group_size, group_ids.as_ref())?;
    let format = format.as_ref().map(|f| slice("format", f)).transpose()?;
    let config = core::RewardConfig {
        weights: core::Weights {
            rank: weights.0,
            abs: weights.1,
            binary: weights.2,
            format: weights.3,
        },
        sigma,
        eps,
        gamma,
        threshold,
        ties: parse_ties(ties)?,
    };
    let out = detached_parallel(py, pred.len(), || {
        core::rapo(pred, gt, &groups, &config, format)
    })
    .map_err(CoreError)?;
    let mut packed = Vec::with_capacity(6 * out.total.len());
    for part in [
        &out.total,
        &out.rank,
        &out.abs,
        &out.binary,
        &out.format,
        &out.advantages,
    ] {
        packed.extend_from_slice(part);
    }
    Ok((vec_to_py(py, packed), out.num_unparseable))
}

/// Rank reward (Eq. 3–5) per completion.
#[pyfunction]
#[pyo3(signature = (pred, gt, group_size, group_ids, gamma, ties))]
fn rank_reward<'py>(
    py: Python<'py>,
    pred: PyReadonlyArray1<'py, f64>,
    gt: PyReadonlyArray1<'py, f64>,
    group_size: Option<usize>,
    group_ids: Option<PyReadonlyArray1<'py, i64>>,
    gamma: f64,
    ties: &str,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (pred, gt) = (slice("pred", &pred)?, slice("gt", &gt)?);
    let groups = groups(pred.len(), group_size, group_ids.as_ref())?;
    let ties = parse_ties(ties)?;
    let out: CoreResult<_> = detached_parallel(py, pred.len(), || {
        Ok(core::rank_reward(pred, gt, &groups, gamma, ties)?)
    });
    Ok(vec_to_py(py, out?))
}

/// FRank preference probability (Eq. 3) per pair: Φ((μ_A − μ_B) / sqrt(σ_A² + σ_B² + γ)).
#[pyfunction]
fn preference_probability<'py>(
    py: Python<'py>,
    mu_a: PyReadonlyArray1<'py, f64>,
    std_a: PyReadonlyArray1<'py, f64>,
    mu_b: PyReadonlyArray1<'py, f64>,
    std_b: PyReadonlyArray1<'py, f64>,
    gamma: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (mu_a, std_a) = (slice("mu_a", &mu_a)?, slice("std_a", &std_a)?);
    let (mu_b, std_b) = (slice("mu_b", &mu_b)?, slice("std_b", &std_b)?);
    let out = detached(py, || {
        core::preference_probability(mu_a, std_a, mu_b, std_b, gamma)
    })
    .map_err(CoreError)?;
    Ok(vec_to_py(py, out))
}

/// Absolute error reward (Eq. 6), element-wise.
#[pyfunction]
fn abs_reward<'py>(
    py: Python<'py>,
    pred: PyReadonlyArray1<'py, f64>,
    gt: PyReadonlyArray1<'py, f64>,
    sigma: f64,
    eps: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (pred, gt) = (slice("pred", &pred)?, slice("gt", &gt)?);
    let out = detached(py, || core::abs_reward(pred, gt, sigma, eps)).map_err(CoreError)?;
    Ok(vec_to_py(py, out))
}

/// Binary reward (Eq. 13), element-wise.
#[pyfunction]
fn binary_reward<'py>(
    py: Python<'py>,
    pred: PyReadonlyArray1<'py, f64>,
    gt: PyReadonlyArray1<'py, f64>,
    threshold: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let (pred, gt) = (slice("pred", &pred)?, slice("gt", &gt)?);
    let out = detached(py, || core::binary_reward(pred, gt, threshold)).map_err(CoreError)?;
    Ok(vec_to_py(py, out))
}

/// Group-relative advantages (Eq. 9).
#[pyfunction]
#[pyo3(signature = (rewards, group_size, group_ids))]
fn group_advantages<'py>(
    py: Python<'py>,
    rewards: PyReadonlyArray1<'py, f64>,
    group_size: Option<usize>,
    group_ids: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let rewards = slice("rewards", &rewards)?;
    let groups = groups(rewards.len(), group_size, group_ids.as_ref())?;
    let out = detached(py, || core::group_advantages(rewards, &groups)).map_err(CoreError)?;
    Ok(vec_to_py(py, out))
}

fn policy(omit: bool) -> core::NanPolicy {
    if omit {
        core::NanPolicy::Omit
    } else {
        core::NanPolicy::Raise
    }
}

macro_rules! metric {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[pyfunction]
        fn $name<'py>(
            py: Python<'py>,
            pred: PyReadonlyArray1<'py, f64>,
            gt: PyReadonlyArray1<'py, f64>,
            omit: bool,
        ) -> PyResult<f64> {
            let (pred, gt) = (slice("pred", &pred)?, slice("gt", &gt)?);
            Ok(
                detached_parallel(py, pred.len(), || core::$name(pred, gt, policy(omit)))
                    .map_err(CoreError)?,
            )
        }
    };
}

metric!(plcc, "Pearson linear correlation coefficient.");
metric!(
    srcc,
    "Spearman rank-order correlation coefficient (average ranks)."
);
metric!(
    krcc,
    "Kendall's tau-b, bit-identical to scipy.stats.kendalltau."
);

/// (plcc, srcc, krcc, n) in one call.
#[pyfunction]
fn evaluate<'py>(
    py: Python<'py>,
    pred: PyReadonlyArray1<'py, f64>,
    gt: PyReadonlyArray1<'py, f64>,
    omit: bool,
) -> PyResult<(f64, f64, f64, usize)> {
    let (pred, gt) = (slice("pred", &pred)?, slice("gt", &gt)?);
    let c = detached_parallel(py, pred.len(), || core::evaluate(pred, gt, policy(omit)))
        .map_err(CoreError)?;
    Ok((c.plcc, c.srcc, c.krcc, c.n))
}

/// Number of threads rayon uses (set `RAYON_NUM_THREADS` before the first call to change it).
#[pyfunction]
fn num_threads() -> usize {
    pool_threads()
}

/// Whether every core of the host is busy with other threads, so that large inputs run on one
/// thread unless `AESR1_ADAPTIVE_THREADS=0` (`aesr1_core::host`; re-read at most every 50 ms).
#[pyfunction]
fn host_saturated(py: Python<'_>) -> bool {
    py.detach(core::host::saturated)
}

/// Process that imported the module: its work runs on rayon's global pool.
static MODULE_PID: OnceLock<u32> = OnceLock::new();
/// A forked child's own pool, with the pid it belongs to.
static CHILD_POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
/// A one-thread pool for calls on a saturated host, with the pid it belongs to.
static SERIAL_POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

/// Inputs at least this long run serially when the host has no core to spare. Shorter calls take
/// well under a millisecond, too little for their thread count to matter, and skip the check.
const GUARDED_FROM: usize = 1 << 14;

/// `slot`'s pool if this process built it, else a new one of `threads` threads (0: rayon's
/// default) that replaces it.
fn process_pool(
    slot: &Mutex<Option<(u32, Arc<rayon::ThreadPool>)>>,
    threads: usize,
) -> Arc<rayon::ThreadPool> {
    let pid = std::process::id();
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match slot.as_ref() {
        Some((owner, pool)) if *owner == pid => Arc::clone(pool),
        _ => {
            let pool = Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a thread pool for this process"),
            );
            *slot = Some((pid, Arc::clone(&pool)));
            pool
        }
    }
}

/// Runs `f` detached from the interpreter, on a thread pool that exists in this process.
///
/// Why: `fork()` copies rayon's global pool but not its threads, so a forked child (a DataLoader
/// worker, a multiprocessing "fork" worker) that used the parent's pool would wait forever. A
/// child therefore gets a pool of its own, built on first use (like tokenizers, which detects
/// forks for the same reason).
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    if MODULE_PID.get() == Some(&std::process::id()) {
        return py.detach(f);
    }
    let pool = process_pool(&CHILD_POOL, 0);
    py.detach(|| pool.install(f))
}

/// Threads of the pool that [`detached`] runs on.
fn pool_threads() -> usize {
    if MODULE_PID.get() == Some(&std::process::id()) {
        rayon::current_num_threads()
    } else {
        process_pool(&CHILD_POOL, 0).current_num_threads()
    }
}

/// [`detached`] for work on `len` items that the core may split over threads: on one thread when
/// the host has no core to spare (`aesr1_core::host`), since more threads then only split the
/// same CPU time and add their coordination. The result is the same either way.
/// `AESR1_ADAPTIVE_THREADS=0` turns that off: for hosts whose scheduler shares CPU time per thread
/// rather than per process group, where more threads do win a larger share.
fn detached_parallel<T: Send>(py: Python<'_>, len: usize, f: impl FnOnce() -> T + Send) -> T {
    static ADAPTIVE: OnceLock<bool> = OnceLock::new();
    if len >= GUARDED_FROM
        && *ADAPTIVE.get_or_init(|| std::env::var("AESR1_ADAPTIVE_THREADS").as_deref() != Ok("0"))
        && pool_threads() > 1
        && py.detach(core::host::saturated)
    {
        let pool = process_pool(&SERIAL_POOL, 1);
        return py.detach(|| pool.install(f));
    }
    detached(py, f)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    MODULE_PID.get_or_init(std::process::id);
    m.add("__version__", core::version())?;
    m.add_function(wrap_pyfunction!(ndtr, m)?)?;
    m.add_function(wrap_pyfunction!(parse_scores, m)?)?;
    m.add_function(wrap_pyfunction!(format_rewards, m)?)?;
    m.add_function(wrap_pyfunction!(parse_completions, m)?)?;
    m.add_function(wrap_pyfunction!(rapo, m)?)?;
    m.add_function(wrap_pyfunction!(rank_reward, m)?)?;
    m.add_function(wrap_pyfunction!(preference_probability, m)?)?;
    m.add_function(wrap_pyfunction!(abs_reward, m)?)?;
    m.add_function(wrap_pyfunction!(binary_reward, m)?)?;
    m.add_function(wrap_pyfunction!(group_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(plcc, m)?)?;
    m.add_function(wrap_pyfunction!(srcc, m)?)?;
    m.add_function(wrap_pyfunction!(krcc, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(host_saturated, m)?)?;
    Ok(())
}
