//! Where a model's parameters come from: a checkpoint on disk, a seeded random initialisation,
//! or nowhere at all (to list shapes and count parameters without allocating them).
//!
//! Models are built by asking a [`Params`] for each tensor by its Hub name, shape and the way
//! transformers would initialise it. The same construction code therefore serves loading,
//! random initialisation and parameter counting, and the list of names can never drift from the
//! code that uses them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::error::input;
use crate::hub::WEIGHT_FILE_NAMES;

/// How transformers' `_init_weights` fills a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// normal(0, std): Linear and Conv1d weights, embedding tables.
    Normal {
        std: f64,
    },
    /// Embedding table whose padding row is zero.
    Embedding {
        std: f64,
        padding_idx: Option<usize>,
    },
    /// DistilBERT's fixed sinusoidal position table.
    Sinusoidal,
    Zeros,
    Ones,
}

/// One parameter as the model asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Something that hands out parameters by name.
pub trait ParamSource {
    fn get(&self, spec: &ParamSpec) -> Result<Tensor>;
}

/// A view of a [`ParamSource`] under a name prefix, as passed down the model's constructors.
#[derive(Clone)]
pub struct Params<'a> {
    source: &'a dyn ParamSource,
    prefix: String,
}

impl<'a> Params<'a> {
    pub fn new(source: &'a dyn ParamSource) -> Self {
        Self {
            source,
            prefix: String::new(),
        }
    }

    /// The same source one level down: `p.pp("encoder").pp(3)` names `encoder.3.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            source: self.source,
            prefix,
        }
    }

    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let name = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        self.source.get(&ParamSpec {
            name,
            shape: shape.to_vec(),
            init,
        })
    }
}

/// Records what is asked for and hands back zero-cost placeholders (one element broadcast to
/// the shape), so a model can be "built" to count its parameters without allocating them.
#[derive(Default)]
pub struct SpecCollector {
    specs: RefCell<Vec<ParamSpec>>,
}

impl SpecCollector {
    pub fn into_specs(self) -> Vec<ParamSpec> {
        self.specs.into_inner()
    }
}

impl ParamSource for SpecCollector {
    fn get(&self, spec: &ParamSpec) -> Result<Tensor> {
        self.specs.borrow_mut().push(spec.clone());
        Ok(Tensor::zeros(1, DType::F32, &Device::Cpu)?.broadcast_as(spec.shape.as_slice())?)
    }
}

/// Fills every parameter as transformers' `_init_weights` does, from one seeded generator in
/// construction order, so the same seed gives the same model on any device.
pub struct RandomInit {
    rng: RefCell<StdRng>,
    dtype: DType,
    device: Device,
}

impl RandomInit {
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            rng: RefCell::new(StdRng::seed_from_u64(seed)),
            dtype,
            device: device.clone(),
        }
    }
}

impl ParamSource for RandomInit {
    fn get(&self, spec: &ParamSpec) -> Result<Tensor> {
        init_tensor(spec, &mut self.rng.borrow_mut(), self.dtype, &self.device)
    }
}

/// Materialises one parameter according to its [`Init`].
pub fn init_tensor(
    spec: &ParamSpec,
    rng: &mut StdRng,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let n = spec.numel();
    let values: Vec<f32> = match spec.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal { std } => normal_values(n, std, rng)?,
        Init::Embedding { std, padding_idx } => {
            let mut v = normal_values(n, std, rng)?;
            if let (Some(pad), [_, width]) = (padding_idx, spec.shape.as_slice()) {
                v[pad * width..(pad + 1) * width].fill(0.0);
            }
            v
        }
        Init::Sinusoidal => {
            let [positions, dim] = spec.shape.as_slice() else {
                anyhow::bail!(
                    "sinusoidal table {} must be 2-D, got {:?}",
                    spec.name,
                    spec.shape
                );
            };
            sinusoidal_table(*positions, *dim)
        }
    };
    Ok(Tensor::from_vec(values, spec.shape.as_slice(), device)?.to_dtype(dtype)?)
}

fn normal_values(n: usize, std: f64, rng: &mut StdRng) -> Result<Vec<f32>> {
    let dist = Normal::new(0.0f32, std as f32).context("invalid initializer_range")?;
    Ok((0..n).map(|_| dist.sample(rng)).collect())
}

/// transformers' `create_sinusoidal_embeddings`: sin on even columns, cos on odd ones, both
/// of `pos / 10000^(2*(j/2)/dim)`.
fn sinusoidal_table(positions: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; positions * dim];
    for pos in 0..positions {
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / dim as f64);
            out[pos * dim + j] = if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
        }
    }
    out
}

/// The weight files of a checkpoint directory, in the order transformers prefers them.
#[derive(Debug, Clone)]
pub enum WeightFiles {
    /// `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    Safetensors(Vec<PathBuf>),
    /// `pytorch_model.bin`, or the shards listed by `pytorch_model.bin.index.json`.
    Pytorch(Vec<PathBuf>),
}

impl WeightFiles {
    /// Finds the weights in a checkpoint directory.
    pub fn find(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Ok(Self::Safetensors(vec![single]));
        }
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            return Ok(Self::Safetensors(shards_from_index(&index)?));
        }
        let bin = dir.join("pytorch_model.bin");
        if bin.is_file() {
            return Ok(Self::Pytorch(vec![bin]));
        }
        let index = dir.join("pytorch_model.bin.index.json");
        if index.is_file() {
            return Ok(Self::Pytorch(shards_from_index(&index)?));
        }
        Err(input(format!(
            "{}: no model weights found: expected one of {}",
            dir.display(),
            WEIGHT_FILE_NAMES.join(", ")
        )))
    }

    pub fn paths(&self) -> &[PathBuf] {
        match self {
            Self::Safetensors(p) | Self::Pytorch(p) => p,
        }
    }

    /// A short description for messages: the file name, or the first shard and a count.
    pub fn describe(&self) -> String {
        let paths = self.paths();
        match paths {
            [one] => one.display().to_string(),
            [first, ..] => format!("{} (+{} more shards)", first.display(), paths.len() - 1),
            [] => "no files".into(),
        }
    }
}

/// Reads the `weight_map` of a sharded checkpoint's index file: the distinct shard files.
fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index)
        .map_err(|e| input(format!("cannot read {}: {e}", index.display())))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| {
        input(format!(
            "{}: expected {{\"weight_map\": {{tensor: file}}}}: {e}",
            index.display()
        ))
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for file in parsed.weight_map.values() {
        let path = dir.join(file);
        if !files.contains(&path) {
            if !path.is_file() {
                return Err(input(format!(
                    "{}: shard `{file}` listed in the index does not exist",
                    index.display()
                )));
            }
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(input(format!(
            "{}: `weight_map` lists no files",
            index.display()
        )));
    }
    Ok(files)
}

/// Tensors of a checkpoint, read lazily by name.
pub struct Checkpoint {
    files: WeightFiles,
    /// Tensor name -> (file index, shape).
    index: HashMap<String, (usize, Vec<usize>)>,
    safetensors: Vec<candle_core::safetensors::MmapedSafetensors>,
    pytorch: Vec<candle_core::pickle::PthTensors>,
}

impl Checkpoint {
    pub fn open(files: WeightFiles) -> Result<Self> {
        let mut index = HashMap::new();
        let mut safetensors = Vec::new();
        let mut pytorch = Vec::new();
        match &files {
            WeightFiles::Safetensors(paths) => {
                for (i, path) in paths.iter().enumerate() {
                    // SAFETY: the file is mapped read-only; like every safetensors reader we
                    // rely on it not being modified while the checkpoint is open.
                    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                        .map_err(|e| {
                            input(format!(
                                "{}: not a valid safetensors file: {e}",
                                path.display()
                            ))
                        })?;
                    for (name, view) in st.tensors() {
                        index.insert(name, (i, view.shape().to_vec()));
                    }
                    safetensors.push(st);
                }
            }
            WeightFiles::Pytorch(paths) => {
                for (i, path) in paths.iter().enumerate() {
                    let pth = candle_core::pickle::PthTensors::new(path, None).map_err(|e| {
                        input(format!(
                            "{}: not a readable PyTorch checkpoint (zip pickle): {e}",
                            path.display()
                        ))
                    })?;
                    for (name, info) in pth.tensor_infos() {
                        index.insert(name.clone(), (i, info.layout.shape().dims().to_vec()));
                    }
                    pytorch.push(pth);
                }
            }
        }
        Ok(Self {
            files,
            index,
            safetensors,
            pytorch,
        })
    }

    pub fn files(&self) -> &WeightFiles {
        &self.files
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, s)| s.as_slice())
    }

    /// Which file holds a tensor, for messages.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index
            .get(name)
            .map(|(i, _)| self.files.paths()[*i].as_path())
    }

    /// Loads one tensor onto the CPU in its stored dtype.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let (file, _) = self
            .index
            .get(name)
            .with_context(|| format!("no tensor `{name}`"))?;
        let tensor = if let Some(st) = self.safetensors.get(*file) {
            st.get(name).and_then(|view| {
                if view.dtype() == safetensors::Dtype::F32 {
                    Ok(copy_f32_releasing(view.data(), view.shape())?)
                } else {
                    let loaded = st.load(name, &Device::Cpu);
                    release_mapped(view.data());
                    loaded
                }
            })
        } else {
            self.pytorch[*file].get(name).and_then(|t| {
                t.ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{name}`")))
            })
        };
        tensor.with_context(|| {
            format!(
                "reading tensor `{name}` from {}",
                self.files.paths()[*file].display()
            )
        })
    }
}

/// Copies a little-endian f32 tensor out of a mapped file a few megabytes at a time, releasing
/// each piece's pages once copied, so even the largest tensor (BERT's 94 MB word embeddings)
/// is never resident twice.
fn copy_f32_releasing(bytes: &[u8], shape: &[usize]) -> candle_core::Result<Tensor> {
    const PIECE: usize = 4 << 20;
    let mut values = Vec::with_capacity(bytes.len() / 4);
    for piece in bytes.chunks(PIECE) {
        values.extend(
            piece
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        release_mapped(piece);
    }
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// Drops the pages of a mapped tensor that has just been copied out of the file, so that
/// loading holds the weights once rather than twice: mapped file pages count towards the
/// process's resident memory until unmapped or released (measured: BERT-base peaked at
/// ~850 MB while loading, ~440 MB after this). The file's pages stay in the page cache; only
/// this process's mapping lets go of them, so a later read maps them again.
fn release_mapped(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let start = bytes.as_ptr() as usize;
        let end = start + bytes.len();
        // Only whole pages inside the tensor: neighbouring tensors may not be read yet.
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        if last > first {
            // SAFETY: the range lies inside a live read-only file mapping; MADV_DONTNEED on
            // such a mapping only drops our page-table entries, and later reads fault the
            // unchanged file contents back in.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// What loading a checkpoint did besides loading: parameters it had to initialise, tensors it
/// did not use.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    /// Parameters absent from the checkpoint and freshly initialised (a task head).
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model did not ask for (e.g. an MLM head, `position_ids`).
    pub unused: Vec<String>,
}

impl LoadReport {
    /// What transformers would warn about, one line each: freshly initialised weights, and
    /// checkpoint tensors the QA model does not use (`position_ids` buffers, which some
    /// exporters save and which carry no weights, are not counted).
    pub fn warnings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.initialised.is_empty() {
            lines.push(format!(
                "warning: {} parameter(s) were not in the checkpoint and were newly initialised: \
                 {}. The model needs fine-tuning before its answers mean anything.",
                self.initialised.len(),
                self.initialised.join(", ")
            ));
        }
        let unused: Vec<&str> = self
            .unused
            .iter()
            .map(String::as_str)
            .filter(|n| !n.ends_with("position_ids"))
            .collect();
        if !unused.is_empty() {
            let shown: Vec<&str> = unused.iter().take(6).copied().collect();
            lines.push(format!(
                "note: {} checkpoint tensor(s) not used by the QA model (e.g. a pre-training \
                 head): {}{}",
                unused.len(),
                shown.join(", "),
                if unused.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ));
        }
        lines
    }
}

/// Serves parameters from a [`Checkpoint`], mapping the Hub's naming variants onto the model's
/// names: task checkpoints (`bert.embeddings...`), base-model checkpoints without the prefix
/// (MiniLM's `embeddings...`) and the old `LayerNorm.gamma/beta` spelling.
pub struct CheckpointSource<'c> {
    checkpoint: &'c Checkpoint,
    /// The model's base prefix (`bert`), stripped when the checkpoint is a bare base model.
    base_prefix: String,
    strip_prefix: bool,
    /// Parameters (by prefix) that may be missing and are then initialised: task heads.
    optional_prefixes: Vec<String>,
    rng: RefCell<StdRng>,
    dtype: DType,
    device: Device,
    used: RefCell<Vec<String>>,
    initialised: RefCell<Vec<String>>,
}

impl<'c> CheckpointSource<'c> {
    /// `optional_prefixes` name parameters that a base-model checkpoint legitimately lacks
    /// (`qa_outputs.`, a pooler); `seed` initialises them.
    pub fn new(
        checkpoint: &'c Checkpoint,
        base_prefix: &str,
        optional_prefixes: &[&str],
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let with_prefix = format!("{base_prefix}.");
        let strip_prefix = !checkpoint.names().any(|n| n.starts_with(&with_prefix));
        Self {
            checkpoint,
            base_prefix: base_prefix.to_string(),
            strip_prefix,
            optional_prefixes: optional_prefixes.iter().map(|s| s.to_string()).collect(),
            rng: RefCell::new(StdRng::seed_from_u64(seed)),
            dtype,
            device: device.clone(),
            used: RefCell::new(Vec::new()),
            initialised: RefCell::new(Vec::new()),
        }
    }

    /// The names under which the checkpoint may store a parameter.
    fn candidates(&self, name: &str) -> Vec<String> {
        let mut base = vec![name.to_string()];
        if self.strip_prefix {
            if let Some(rest) = name.strip_prefix(&format!("{}.", self.base_prefix)) {
                base.insert(0, rest.to_string());
            }
        }
        let mut all = base.clone();
        for b in base {
            if let Some(stem) = b.strip_suffix("LayerNorm.weight") {
                all.push(format!("{stem}LayerNorm.gamma"));
            } else if let Some(stem) = b.strip_suffix("LayerNorm.bias") {
                all.push(format!("{stem}LayerNorm.beta"));
            }
        }
        all
    }

    /// Finishes loading: fails if nothing matched, otherwise reports what was initialised and
    /// what went unused.
    pub fn finish(self) -> Result<LoadReport> {
        let used = self.used.into_inner();
        if used.is_empty() {
            let mut sample: Vec<&str> = self.checkpoint.names().collect();
            sample.sort();
            sample.truncate(5);
            return Err(input(format!(
                "{}: none of the model's tensors were found (it holds e.g. {})",
                self.checkpoint.files.describe(),
                sample.join(", ")
            )));
        }
        let mut unused: Vec<String> = self
            .checkpoint
            .names()
            .filter(|n| !used.iter().any(|u| u == n))
            .map(str::to_string)
            .collect();
        unused.sort();
        Ok(LoadReport {
            files: self.checkpoint.files.paths().to_vec(),
            initialised: self.initialised.into_inner(),
            unused,
        })
    }
}

impl ParamSource for CheckpointSource<'_> {
    fn get(&self, spec: &ParamSpec) -> Result<Tensor> {
        let found = self
            .candidates(&spec.name)
            .into_iter()
            .find(|c| self.checkpoint.shape(c).is_some());
        let Some(stored) = found else {
            if self
                .optional_prefixes
                .iter()
                .any(|p| spec.name.starts_with(p.as_str()))
            {
                self.initialised.borrow_mut().push(spec.name.clone());
                return init_tensor(spec, &mut self.rng.borrow_mut(), self.dtype, &self.device);
            }
            return Err(input(format!(
                "{}: missing tensor `{}` (shape {:?})",
                self.checkpoint.files.describe(),
                spec.name,
                spec.shape
            )));
        };
        let shape = self.checkpoint.shape(&stored).unwrap_or_default();
        if shape != spec.shape.as_slice() {
            return Err(input(format!(
                "{}: tensor `{stored}` has shape {:?}, but the config needs {:?}",
                self.checkpoint
                    .file_of(&stored)
                    .unwrap_or(Path::new("?"))
                    .display(),
                shape,
                spec.shape
            )));
        }
        self.used.borrow_mut().push(stored.clone());
        let tensor = self.checkpoint.load(&stored)?;
        Ok(tensor.to_dtype(self.dtype)?.to_device(&self.device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_table_matches_the_formula() {
        let t = sinusoidal_table(4, 6);
        // position 0: sin(0)=0 on even columns, cos(0)=1 on odd columns.
        assert_eq!(&t[0..6], &[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        // position 1, column 2: sin(1 / 10000^(2/6)).
        let expect = (1.0f64 / 10000f64.powf(2.0 / 6.0)).sin() as f32;
        assert!((t[6 + 2] - expect).abs() < 1e-7);
        // position 3, column 5: cos(3 / 10000^(4/6)).
        let expect = (3.0f64 / 10000f64.powf(4.0 / 6.0)).cos() as f32;
        assert!((t[18 + 5] - expect).abs() < 1e-7);
    }

    #[test]
    fn random_init_follows_transformers() -> Result<()> {
        let src = RandomInit::new(7, DType::F32, &Device::Cpu);
        let p = Params::new(&src);
        let w = p.get("w", &[200, 300], Init::Normal { std: 0.02 })?;
        let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 5e-4, "std {std}");
        let e = p.get(
            "emb",
            &[10, 4],
            Init::Embedding {
                std: 1.0,
                padding_idx: Some(3),
            },
        )?;
        let rows: Vec<Vec<f32>> = e.to_vec2()?;
        assert_eq!(rows[3], vec![0.0; 4]);
        assert!(rows[2].iter().all(|x| *x != 0.0));
        let ones: Vec<f32> = p.get("ln", &[5], Init::Ones)?.to_vec1()?;
        assert_eq!(ones, vec![1.0; 5]);
        // Same seed, same values.
        let again = RandomInit::new(7, DType::F32, &Device::Cpu);
        let w2 = Params::new(&again).get("w", &[200, 300], Init::Normal { std: 0.02 })?;
        assert_eq!(w2.flatten_all()?.to_vec1::<f32>()?, v);
        Ok(())
    }

    #[test]
    fn collector_counts_without_allocating() -> Result<()> {
        let c = SpecCollector::default();
        let p = Params::new(&c).pp("bert").pp(0);
        let t = p.get("weight", &[30522, 768], Init::Zeros)?;
        assert_eq!(t.dims(), &[30522, 768]);
        let specs = c.into_specs();
        assert_eq!(specs[0].name, "bert.0.weight");
        assert_eq!(specs[0].numel(), 30522 * 768);
        Ok(())
    }
}
