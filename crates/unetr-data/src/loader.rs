//! The training loader: MONAI's `CacheDataset` (deterministic preprocessing done once, in parallel, kept in
//! memory within a byte budget) and a `DataLoader` that draws random crops for each step on a background
//! thread, in parallel over the batch's volumes, while the model computes the previous step.
//!
//! Every batch is a pure function of (seed, step): volume choice and augmentation draw from RNG streams
//! derived from both, so a run resumed at step k sees exactly the batches of an uninterrupted run, whatever
//! the thread timing.

use crate::datalist::Item;
use crate::error::{DataError, Result};
use crate::nifti::ReadOptions;
use crate::pipeline::Compose;
use crate::transforms::{load_item, Sample};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Items with their deterministic preprocessing cached up to `cache_bytes` (later items beyond the budget
/// are preprocessed again at each use, as MONAI's CacheDataset with a cache_num below the dataset size).
pub struct CacheDataset {
    items: Vec<Item>,
    pipeline: Arc<Compose>,
    read: ReadOptions,
    cache: Vec<Option<Arc<Sample>>>,
    cached_bytes: usize,
}

fn sample_bytes(s: &Sample) -> usize {
    4 * (s.image.len() + s.label.as_ref().map_or(0, |l| l.len()))
}

impl CacheDataset {
    /// Preprocesses every item once in parallel (so every bad file is reported before training starts) and
    /// keeps those that fit in `cache_bytes`, in datalist order.
    pub fn new(items: Vec<Item>, pipeline: Arc<Compose>, read: ReadOptions, cache_bytes: usize) -> Result<Self> {
        if items.is_empty() {
            return Err(DataError::Invalid("empty dataset".into()));
        }
        let done: Vec<Sample> = items.par_iter().map(|it| pipeline.apply_deterministic(load_item(it, &read)?)).collect::<Result<_>>()?;
        let mut cached_bytes = 0;
        let cache = done
            .into_iter()
            .map(|s| {
                let b = sample_bytes(&s);
                (cached_bytes + b <= cache_bytes).then(|| {
                    cached_bytes += b;
                    Arc::new(s)
                })
            })
            .collect();
        Ok(Self { items, pipeline, read, cache, cached_bytes })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn items(&self) -> &[Item] {
        &self.items
    }
    pub fn pipeline(&self) -> &Compose {
        &self.pipeline
    }
    /// (items cached, bytes cached).
    pub fn cache_stats(&self) -> (usize, usize) {
        (self.cache.iter().filter(|c| c.is_some()).count(), self.cached_bytes)
    }

    /// Item `i` after the deterministic transforms.
    pub fn get(&self, i: usize) -> Result<Arc<Sample>> {
        match &self.cache[i] {
            Some(s) => Ok(s.clone()),
            None => Ok(Arc::new(self.pipeline.apply_deterministic(load_item(&self.items[i], &self.read)?)?)),
        }
    }
}

/// Crops of one step stacked: image [n, C, roi], label [n, 1, roi] (n = volumes x samples per volume).
#[derive(Debug, Clone)]
pub struct Batch {
    pub step: u64,
    pub image: Vec<f32>,
    pub label: Vec<f32>,
    pub n: usize,
    pub channels: usize,
    pub dims: [usize; 3],
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Volumes per batch over all ranks (each gives the random transforms' samples, e.g. num_samples crops).
    pub batch_size: usize,
    pub seed: u64,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Which part of each batch this process makes (data parallelism).
    pub shard: Shard,
}

/// Rank `rank` of `world` takes the batch's volume slots `rank * b / world .. (rank + 1) * b / world`
/// (PyTorch's DistributedSampler semantics on our (seed, step) batches): the ranks' shards together are
/// exactly the batch one process would make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { rank: 0, world: 1 }
    }
}

impl Shard {
    /// This rank's slots of a batch of `n`.
    pub fn slots(&self, n: usize) -> std::ops::Range<usize> {
        let w = self.world.max(1);
        (self.rank * n / w)..((self.rank + 1) * n / w)
    }
}

/// splitmix64: decorrelates the (seed, step, slot) triples into RNG seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng_for(seed: u64, step: u64, slot: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(mix(mix(seed) ^ step) ^ slot))
}

/// Builds batch `step`: `batch_size` volumes drawn uniformly, the random transforms run in parallel.
pub fn make_batch(ds: &CacheDataset, cfg: &LoaderConfig, step: u64) -> Result<Batch> {
    let mut pick = rng_for(cfg.seed, step, u64::MAX);
    let idx: Vec<usize> = (0..cfg.batch_size.max(1)).map(|_| pick.random_range(0..ds.len())).collect();
    let slots = cfg.shard.slots(idx.len());
    if slots.is_empty() {
        return Err(DataError::Invalid(format!("batch_size {} has no volume for rank {} of {}: make it a multiple of the world size", cfg.batch_size, cfg.shard.rank, cfg.shard.world)));
    }
    let crops: Vec<Vec<Sample>> = idx[slots.clone()]
        .par_iter()
        .enumerate()
        .map(|(k, &i)| {
            let slot = slots.start + k;
            let s = ds.get(i)?;
            let mut rng = rng_for(cfg.seed, step, slot as u64);
            ds.pipeline.apply_random((*s).clone(), &mut rng)
        })
        .collect::<Result<_>>()?;
    let crops: Vec<Sample> = crops.into_iter().flatten().collect();
    stack(&crops, step)
}

/// Stacks samples of one shape; all must carry labels.
pub fn stack(crops: &[Sample], step: u64) -> Result<Batch> {
    let first = crops.first().ok_or_else(|| DataError::Invalid("the random transforms produced no sample".into()))?;
    let (dims, channels) = (first.dims, first.channels);
    let nvox: usize = dims.iter().product();
    let mut image = Vec::with_capacity(crops.len() * channels * nvox);
    let mut label = Vec::with_capacity(crops.len() * nvox);
    for s in crops {
        if s.dims != dims || s.channels != channels {
            return Err(DataError::Invalid(format!(
                "samples of one batch differ in shape ({:?} x {} vs {dims:?} x {channels}): end the pipeline with a fixed-size crop",
                s.dims, s.channels
            )));
        }
        image.extend_from_slice(&s.image);
        label.extend_from_slice(s.label.as_ref().ok_or_else(|| DataError::Invalid("training samples need labels".into()))?);
    }
    Ok(Batch { step, image, label, n: crops.len(), channels, dims })
}

/// Batches `start..` made on a background thread, `prefetch` ahead; iteration ends with the first error.
/// Dropping the iterator stops the thread.
pub struct Loader {
    rx: Receiver<Result<Batch>>,
    _worker: std::thread::JoinHandle<()>,
}

impl Loader {
    pub fn new(ds: Arc<CacheDataset>, cfg: LoaderConfig, start: u64) -> Self {
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let worker = std::thread::Builder::new()
            .name("unetr-loader".into())
            .spawn(move || {
                for step in start.. {
                    let b = make_batch(&ds, &cfg, step);
                    let stop = b.is_err();
                    if tx.send(b).is_err() || stop {
                        break;
                    }
                }
            })
            .expect("spawning the loader thread");
        Self { rx, _worker: worker }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.recv().ok()
    }
}
