//! Data-parallel training on libtorch's own distributed engine, c10d (the one under
//! `torch.distributed`): a `TCPStore` rendezvous, a Gloo process group (CPU, and CUDA tensors
//! through host copies) or an NCCL one (CUDA, when this build has it), and the collectives data
//! parallelism needs: all-reduce, broadcast, barrier. No socket code of mm's own carries a
//! collective; a small C++ shim (`csrc/c10d.cpp`, compiled against the provisioned libtorch's
//! headers) only creates libtorch's objects and turns their exceptions into errors.
//!
//! Processes find each other the way `torchrun` tells them to: [`Env::from_env`] reads
//! `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (Slurm's `SLURM_PROCID`,
//! `SLURM_NTASKS` and `SLURM_LOCALID` when `RANK` is not set), so mm runs unchanged under
//! torchrun-style launchers, Slurm and Kubernetes' PyTorch jobs; [`launch`] starts the local
//! processes itself (`mm train --nproc-per-node N`).
//!
//! What the training loop builds from these ([`crate::train::fit_in`]): the initial variables
//! broadcast from rank 0 ([`broadcast_variables`]), gradients averaged across ranks in flat
//! buckets before every optimiser step ([`average_gradients`]), and validation predictions
//! gathered from every rank ([`ProcessGroup::all_gather`]).
//!
//! Settings from the environment (deployment, not model, settings): `MM_DIST_BACKEND` (`gloo` or
//! `nccl`; default NCCL for CUDA devices when built in, Gloo otherwise), `MM_DIST_TIMEOUT`
//! (seconds a collective may wait, default 600: a rank that stops answering fails the others
//! with an error after this long; one whose process dies fails them at once) and
//! `GLOO_SOCKET_IFNAME` (the network interface Gloo binds to, as in PyTorch).
//!
//! ```no_run
//! use mm_train::dist::{Env, GroupOptions, ProcessGroup};
//! // Under `torchrun --nproc-per-node 2 ...` (or `mm train --nproc-per-node 2`):
//! let env = Env::from_env()?.expect("launched with RANK and WORLD_SIZE");
//! let group = ProcessGroup::new(&env, &GroupOptions::from_env(tch::Device::Cpu)?)?;
//! let t = tch::Tensor::from_slice(&[group.rank() as f32]);
//! group.all_reduce(&[t.shallow_clone()], mm_train::dist::ReduceOp::Sum)?;
//! println!("rank {} of {}: sum of ranks {}", group.rank(), group.world_size(), t.double_value(&[0]));
//! # Ok::<(), mm_train::Error>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString, OsString};
use std::path::Path;
use std::process::{Child, Command};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use tch::{nn, Device, Kind, Tensor};

use crate::{Error, Result};

mod ffi {
    use std::ffi::{c_char, c_int};

    /// The shim's process group (opaque).
    #[repr(C)]
    pub struct Group {
        _private: [u8; 0],
    }

    extern "C" {
        pub fn mm_c10d_has_nccl() -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn mm_c10d_new(
            backend: c_int,
            addr: *const c_char,
            port: u16,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            ifname: *const c_char,
            device_index: c_int,
            err: *mut *mut c_char,
        ) -> *mut Group;
        pub fn mm_c10d_free(group: *mut Group);
        pub fn mm_c10d_free_error(err: *mut c_char);
        pub fn mm_c10d_allreduce(
            group: *mut Group,
            tensors: *const *mut torch_sys::C_tensor,
            n: usize,
            op: c_int,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn mm_c10d_broadcast(
            group: *mut Group,
            tensors: *const *mut torch_sys::C_tensor,
            n: usize,
            root: c_int,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn mm_c10d_barrier(group: *mut Group, err: *mut *mut c_char) -> c_int;
    }
}

/// The environment variable `MM_DIST_BACKEND`.
pub const BACKEND_VAR: &str = "MM_DIST_BACKEND";
/// The environment variable `MM_DIST_TIMEOUT` (seconds).
pub const TIMEOUT_VAR: &str = "MM_DIST_TIMEOUT";
/// Set by [`launch`] in the processes it starts, so that they know they are its workers.
pub const LAUNCHED_VAR: &str = "MM_LAUNCHED";
/// The default time a collective may wait for the other ranks.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Gradient buckets hold up to this many bytes (DDP's default bucket size).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Whether this build of the shim has NCCL (its libtorch had CUDA and the CUDA headers).
pub fn has_nccl() -> bool {
    // SAFETY: a constant function of the shim.
    unsafe { ffi::mm_c10d_has_nccl() != 0 }
}

/// Where this process is in a distributed job, as a torchrun-style launcher says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The host of rank 0, which serves the rendezvous store (`MASTER_ADDR`).
    pub master_addr: String,
    /// Its port (`MASTER_PORT`).
    pub master_port: u16,
    /// This process's rank, from 0 (`RANK`).
    pub rank: usize,
    /// Processes in the job (`WORLD_SIZE`).
    pub world_size: usize,
    /// This process's rank on its machine (`LOCAL_RANK`): the GPU it uses.
    pub local_rank: usize,
}

impl Env {
    /// Reads the job from the process environment; `None` when it names no job
    /// (`WORLD_SIZE` unset, or 1 without `MASTER_ADDR`).
    pub fn from_env() -> Result<Option<Env>> {
        Env::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Env::from_env`] over any source of variables.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Env>> {
        let var = |names: &[&'static str]| -> Option<(&'static str, String)> {
            names.iter().find_map(|n| get(n).map(|v| (*n, v)))
        };
        let Some((world_name, world)) = var(&["WORLD_SIZE", "SLURM_NTASKS"]) else {
            return Ok(None);
        };
        let number = |name: &str, value: &str| -> Result<usize> {
            value
                .trim()
                .parse()
                .map_err(|_| Error::Distributed(format!("{name}={value:?} is not a whole number")))
        };
        let world_size = number(world_name, &world)?;
        if world_size == 0 {
            return Err(Error::Distributed(format!(
                "{world_name}=0: a job has at least one process"
            )));
        }
        let master_addr = get("MASTER_ADDR");
        if world_size == 1 && master_addr.is_none() {
            return Ok(None);
        }
        let Some(master_addr) = master_addr.filter(|a| !a.trim().is_empty()) else {
            return Err(Error::Distributed(format!(
                "{world_name}={world_size} but MASTER_ADDR is not set: it names the host of rank 0"
            )));
        };
        let master_port = match get("MASTER_PORT") {
            Some(p) => p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::Distributed(format!("MASTER_PORT={p:?} is not a port (1 to 65535)"))
            })?,
            None => {
                return Err(Error::Distributed(
                    "MASTER_PORT is not set: it names the port of rank 0's rendezvous store".into(),
                ))
            }
        };
        let (rank_name, rank) = var(&["RANK", "SLURM_PROCID"]).ok_or_else(|| {
            Error::Distributed(format!("{world_name}={world_size} but RANK is not set"))
        })?;
        let rank = number(rank_name, &rank)?;
        if rank >= world_size {
            return Err(Error::Distributed(format!(
                "{rank_name}={rank} is not below {world_name}={world_size}"
            )));
        }
        let local_rank = match var(&["LOCAL_RANK", "SLURM_LOCALID"]) {
            Some((name, v)) => number(name, &v)?,
            None => 0,
        };
        Ok(Some(Env {
            master_addr: master_addr.trim().to_string(),
            master_port,
            rank,
            world_size,
            local_rank,
        }))
    }
}

/// The transport of a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors (and CUDA tensors through host copies); always built in.
    Gloo,
    /// NCCL: CUDA tensors, GPU to GPU; when this build has it ([`has_nccl`]).
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            other => Err(Error::Distributed(format!("{BACKEND_VAR}={other:?}: use gloo or nccl"))),
        }
    }
}

/// How to create a process group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    /// The transport.
    pub backend: Backend,
    /// The device this rank computes on (NCCL binds to it).
    pub device: Device,
    /// How long a collective (and the rendezvous) may wait for the other ranks.
    pub timeout: Duration,
}

impl GroupOptions {
    /// The options for `device` with `MM_DIST_BACKEND` and `MM_DIST_TIMEOUT` applied.
    pub fn from_env(device: Device) -> Result<Self> {
        let backend = match std::env::var(BACKEND_VAR) {
            Ok(b) => b.parse()?,
            Err(_) if device.is_cuda() && has_nccl() => Backend::Nccl,
            Err(_) => Backend::Gloo,
        };
        let timeout = match std::env::var(TIMEOUT_VAR) {
            Ok(t) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    Error::Distributed(format!(
                        "{TIMEOUT_VAR}={t:?} is not a positive number of seconds"
                    ))
                })?,
            Err(_) => DEFAULT_TIMEOUT,
        };
        Ok(GroupOptions { backend, device, timeout })
    }
}

/// Reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

/// A c10d process group joined through a `TCPStore` rendezvous.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: NonNull<ffi::Group>,
    rank: usize,
    world_size: usize,
    backend: Backend,
    device: Device,
}

// SAFETY: c10d's process groups are used from any thread (PyTorch hands them between threads);
// mm calls one from one thread at a time (`&self` methods wait for their work to finish).
unsafe impl Send for ProcessGroup {}

fn take_error(err: *mut c_char, what: &str) -> Error {
    if err.is_null() {
        return Error::Distributed(format!("{what} failed"));
    }
    // SAFETY: the shim returns a NUL-terminated string it allocated, freed here once.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { ffi::mm_c10d_free_error(err) };
    Error::Distributed(format!("{what}: {}", message.trim()))
}

impl ProcessGroup {
    /// Joins the job: rank 0 serves the rendezvous store at `MASTER_ADDR:MASTER_PORT`, every
    /// rank connects to it (waiting up to the timeout for the others) and the process group
    /// connects every pair of ranks.
    pub fn new(env: &Env, options: &GroupOptions) -> Result<Self> {
        if options.backend == Backend::Nccl && !has_nccl() {
            return Err(Error::Distributed(
                "NCCL asked for, but this build of mm has none (its libtorch had no CUDA headers); use MM_DIST_BACKEND=gloo".into(),
            ));
        }
        let device_index = match (options.backend, options.device) {
            (Backend::Nccl, Device::Cuda(i)) => i as c_int,
            (Backend::Nccl, d) => {
                return Err(Error::Distributed(format!("NCCL needs a CUDA device, not {d:?}")))
            }
            _ => -1,
        };
        let addr = CString::new(env.master_addr.clone())
            .map_err(|_| Error::Distributed("MASTER_ADDR holds a NUL byte".into()))?;
        let ifname = std::env::var("GLOO_SOCKET_IFNAME").ok().and_then(|s| CString::new(s).ok());
        let mut err: *mut c_char = std::ptr::null_mut();
        let timeout_ms = options.timeout.as_millis().min(i64::MAX as u128) as i64;
        // SAFETY: valid C strings for the call's duration; `err` receives an owned message.
        let raw = unsafe {
            ffi::mm_c10d_new(
                match options.backend {
                    Backend::Gloo => 0,
                    Backend::Nccl => 1,
                },
                addr.as_ptr(),
                env.master_port,
                env.rank as c_int,
                env.world_size as c_int,
                timeout_ms,
                ifname.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                device_index,
                &mut err,
            )
        };
        let what = format!(
            "rank {} of {}: joining the job at {}:{} ({:?})",
            env.rank, env.world_size, env.master_addr, env.master_port, options.backend
        );
        let raw = NonNull::new(raw).ok_or_else(|| take_error(err, &what))?;
        Ok(ProcessGroup {
            raw,
            rank: env.rank,
            world_size: env.world_size,
            backend: options.backend,
            device: options.device,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the group.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Whether this is rank 0, the one that writes checkpoints and logs.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The transport.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn check(&self, tensors: &[Tensor], what: &str) -> Result<Vec<*mut torch_sys::C_tensor>> {
        for t in tensors {
            if !t.is_contiguous() {
                return Err(Error::Distributed(format!("{what}: tensors must be contiguous")));
            }
            if self.backend == Backend::Nccl && !t.device().is_cuda() {
                return Err(Error::Distributed(format!(
                    "{what}: NCCL needs CUDA tensors, got one on {:?}",
                    t.device()
                )));
            }
        }
        Ok(tensors.iter().map(|t| t.as_ptr() as *mut torch_sys::C_tensor).collect())
    }

    fn failed(&self, err: *mut c_char, what: &str) -> Error {
        take_error(err, &format!("rank {} of {}: {what}", self.rank, self.world_size))
    }

    /// Reduces each tensor in place across the ranks (every rank ends with the result). The
    /// tensors' collectives are all started before the first is waited on.
    pub fn all_reduce(&self, tensors: &[Tensor], op: ReduceOp) -> Result<()> {
        let ptrs = self.check(tensors, "all-reduce")?;
        let mut err = std::ptr::null_mut();
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        // SAFETY: the pointers are tch's live tensor handles, borrowed for the call.
        let rc = tch::no_grad(|| unsafe {
            ffi::mm_c10d_allreduce(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), op, &mut err)
        });
        if rc != 0 {
            return Err(self.failed(err, "all-reduce"));
        }
        Ok(())
    }

    /// Overwrites each tensor with rank `root`'s.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let ptrs = self.check(tensors, "broadcast")?;
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce`.
        let rc = tch::no_grad(|| unsafe {
            ffi::mm_c10d_broadcast(
                self.raw.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                root as c_int,
                &mut err,
            )
        });
        if rc != 0 {
            return Err(self.failed(err, "broadcast"));
        }
        Ok(())
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: a live group.
        let rc = unsafe { ffi::mm_c10d_barrier(self.raw.as_ptr(), &mut err) };
        if rc != 0 {
            return Err(self.failed(err, "barrier"));
        }
        Ok(())
    }

    /// The device collectives run on: the CPU for Gloo, this rank's GPU for NCCL.
    fn comm_device(&self) -> Device {
        match self.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => self.device,
        }
    }

    /// `values` reduced across the ranks (a few numbers: losses, counts, flags), on the device
    /// the transport needs.
    pub fn all_reduce_values(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_device(self.comm_device());
        self.all_reduce(&[t.shallow_clone()], op)?;
        host_vec(&t)
    }

    /// Every rank's `values`, concatenated in rank order (each rank may give a different
    /// number). Exact for `f32` and integers up to 2^53, which travel as `f64`.
    pub fn all_gather(&self, values: &[f64]) -> Result<Vec<f64>> {
        let device = self.comm_device();
        let mut counts = vec![0f64; self.world_size];
        counts[self.rank] = values.len() as f64;
        let counts_t = Tensor::from_slice(&counts).to_device(device);
        self.all_reduce(&[counts_t.shallow_clone()], ReduceOp::Sum)?;
        let counts: Vec<f64> = host_vec(&counts_t)?;
        let counts: Vec<usize> = counts.iter().map(|c| *c as usize).collect();
        let total: usize = counts.iter().sum();
        let offset: usize = counts[..self.rank].iter().sum();
        let mut all = vec![0f64; total];
        all[offset..offset + values.len()].copy_from_slice(values);
        let all_t = Tensor::from_slice(&all).to_device(device);
        self.all_reduce(&[all_t.shallow_clone()], ReduceOp::Sum)?;
        host_vec(&all_t)
    }

    /// Rank `root`'s bytes on every rank (`bytes` is read on `root` only).
    pub fn broadcast_bytes(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>> {
        let device = self.comm_device();
        let len = Tensor::from_slice(&[bytes.len() as i64]).to_device(device);
        self.broadcast(&[len.shallow_clone()], root)?;
        let n = len.int64_value(&[0]) as usize;
        let data = if self.rank == root {
            Tensor::from_slice(bytes)
        } else {
            Tensor::zeros([n as i64], (Kind::Uint8, Device::Cpu))
        }
        .to_device(device);
        if n > 0 {
            self.broadcast(&[data.shallow_clone()], root)?;
        }
        host_vec(&data)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by `mm_c10d_new`, freed once.
        unsafe { ffi::mm_c10d_free(self.raw.as_ptr()) }
    }
}

/// A tensor's values on the host.
pub(crate) fn host_vec<T>(t: &Tensor) -> Result<Vec<T>>
where
    Vec<T>: TryFrom<Tensor, Error = tch::TchError>,
{
    Vec::<T>::try_from(t.to_device(Device::Cpu).contiguous().view([-1]))
        .map_err(|e| Error::Distributed(e.to_string()))
}

/// Tensors packed into flat buckets (by kind and device, up to `cap` bytes each) so that a
/// collective moves a few large buffers instead of many small ones.
fn buckets(tensors: &[Tensor], cap: usize) -> Vec<Vec<usize>> {
    let mut open: BTreeMap<(String, String), (Vec<usize>, usize)> = BTreeMap::new();
    let mut done = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let key = (format!("{:?}", t.kind()), format!("{:?}", t.device()));
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        let entry = open.entry(key).or_default();
        if !entry.0.is_empty() && entry.1 + bytes > cap {
            done.push(std::mem::take(&mut entry.0));
            entry.1 = 0;
        }
        entry.0.push(i);
        entry.1 += bytes;
    }
    done.extend(open.into_values().map(|(b, _)| b).filter(|b| !b.is_empty()));
    done
}

/// A bucket's tensors as one flat tensor, on their device (buckets never mix devices; Gloo
/// stages CUDA tensors through host memory itself, as for PyTorch's DDP).
fn flatten(tensors: &[Tensor], bucket: &[usize]) -> Tensor {
    let parts: Vec<Tensor> = bucket.iter().map(|&i| tensors[i].detach().reshape([-1])).collect();
    Tensor::cat(&parts, 0)
}

/// Copies a bucket's flat tensor back into its tensors (times `scale`), skipping those `keep`
/// refuses (their part of the flat tensor is passed over).
fn unflatten(
    flat: &Tensor,
    tensors: &[Tensor],
    bucket: &[usize],
    scale: Option<f64>,
    keep: impl Fn(usize) -> bool,
) {
    tch::no_grad(|| {
        let flat = match scale {
            Some(s) => flat * s,
            None => flat.shallow_clone(),
        };
        let mut offset = 0i64;
        for &i in bucket {
            let n = tensors[i].numel() as i64;
            if keep(i) {
                let mut t = tensors[i].shallow_clone();
                t.copy_(&flat.narrow(0, offset, n).view_as(&t));
            }
            offset += n;
        }
    });
}

/// Replaces the pipeline's statistics (normalisation, vocabulary) with rank 0's, through the
/// files they are saved as: fitted in parallel, they could differ in the last bits between
/// processes, and every rank must feed the model the same numbers.
pub fn share_statistics(
    group: &ProcessGroup,
    pipeline: &mut mm_data::pipeline::Pipeline,
) -> Result<()> {
    let dir =
        std::env::temp_dir().join(format!("mm-dist-stats-{}-{}", std::process::id(), group.rank()));
    let _ = std::fs::remove_dir_all(&dir);
    let files: BTreeMap<String, String> = if group.is_main() {
        pipeline.save_statistics(&dir).map_err(Error::from)?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::file(&dir, e))?.flatten() {
            let text =
                std::fs::read_to_string(entry.path()).map_err(|e| Error::file(entry.path(), e))?;
            files.insert(entry.file_name().to_string_lossy().into_owned(), text);
        }
        files
    } else {
        BTreeMap::new()
    };
    let bytes = group.broadcast_bytes(&serde_json::to_vec(&files).unwrap_or_default(), 0)?;
    if !group.is_main() {
        let files: BTreeMap<String, String> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Distributed(format!("rank 0's statistics: {e}")))?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).map_err(|e| Error::file(&dir, e))?;
        }
        pipeline.load_statistics(&dir).map_err(Error::from)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Overwrites every variable of `vs` (parameters and buffers such as batch-norm statistics)
/// with rank `root`'s, in buckets. Every rank must hold the same variables.
pub fn broadcast_variables(group: &ProcessGroup, vs: &nn::VarStore, root: usize) -> Result<()> {
    let named: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let tensors: Vec<Tensor> = named.into_values().collect();
    broadcast_tensors(group, &tensors, root)
}

/// Overwrites each tensor with rank `root`'s, in buckets.
pub fn broadcast_tensors(group: &ProcessGroup, tensors: &[Tensor], root: usize) -> Result<()> {
    if tensors.is_empty() {
        return Ok(());
    }
    let plan = buckets(tensors, BUCKET_BYTES);
    let flats: Vec<Tensor> = plan.iter().map(|b| flatten(tensors, b)).collect();
    group.broadcast(&flats, root)?;
    for (flat, b) in flats.iter().zip(&plan) {
        unflatten(flat, tensors, b, None, |_| true);
    }
    Ok(())
}

/// Averages the gradients of `params` across the ranks, in place, in flat buckets whose
/// all-reduces are all in flight at once. Every rank passes the same parameters in the same
/// order. A parameter without a gradient on some ranks counts as a zero gradient there (as in
/// PyTorch's DDP with unused parameters); one without a gradient on every rank keeps none, so
/// the optimiser leaves it alone as it would in one process.
pub fn average_gradients(group: &ProcessGroup, params: &[Tensor]) -> Result<()> {
    if params.is_empty() || group.world_size == 1 {
        return Ok(());
    }
    let current: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
    let defined: Vec<f32> = current.iter().map(|g| if g.defined() { 1.0 } else { 0.0 }).collect();
    let grads: Vec<Tensor> = current
        .into_iter()
        .zip(params)
        .map(|(g, p)| if g.defined() { g } else { p.zeros_like() })
        .collect();
    let flags = Tensor::from_slice(&defined).to_device(params[0].device());
    let plan = buckets(&grads, BUCKET_BYTES);
    let mut flats: Vec<Tensor> = plan.iter().map(|b| flatten(&grads, b)).collect();
    flats.push(flags.shallow_clone());
    group.all_reduce(&flats, ReduceOp::Sum)?;
    let flags: Vec<f32> = host_vec(&flags)?;
    // Gradients another rank has and this one lacks: made (zero) here, then filled below.
    let missing: Vec<&Tensor> = params
        .iter()
        .zip(&flags)
        .filter(|(p, f)| **f > 0.0 && !p.grad().defined())
        .map(|(p, _)| p)
        .collect();
    if !missing.is_empty() {
        let zero = missing
            .iter()
            .map(|p| (*p * 0.0).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, missing[0].device())), |a, b| a + b);
        zero.backward();
    }
    // Every gradient now exists where some rank had one; those no rank had stay absent.
    // (Those stand in as the zero placeholders, which `keep` below never writes.)
    let targets: Vec<Tensor> = params
        .iter()
        .zip(&grads)
        .map(|(p, z)| {
            let g = p.grad();
            if g.defined() {
                g
            } else {
                z.shallow_clone()
            }
        })
        .collect();
    let scale = 1.0 / group.world_size as f64;
    for (flat, b) in flats.iter().zip(&plan) {
        unflatten(flat, &targets, b, Some(scale), |i| flags[i] > 0.0);
    }
    Ok(())
}

/// How [`launch`] starts a job's local processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Processes on this machine (`--nproc-per-node`).
    pub nproc_per_node: usize,
    /// Machines in the job (`--nnodes`, default 1).
    pub nnodes: usize,
    /// This machine's index, from 0 (`--node-rank`).
    pub node_rank: usize,
    /// The host of global rank 0 (`--master-addr`, default 127.0.0.1).
    pub master_addr: String,
    /// Its port (`--master-port`); `None` picks a free one, on one machine only.
    pub master_port: Option<u16>,
    /// More variables for every process.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// One machine, `nproc` processes.
    pub fn local(nproc: usize) -> Self {
        Launch {
            nproc_per_node: nproc,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: None,
            env: Vec::new(),
        }
    }
}

/// A free TCP port on the loopback interface (bound, read and released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Distributed(format!("finding a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Distributed(format!("finding a free port: {e}")))
}

/// Starts `program args` once per local rank with torchrun's variables (`MASTER_ADDR`,
/// `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `GROUP_RANK`),
/// [`LAUNCHED_VAR`] and `spec.env` set, and waits for all of them. Unless the environment sets
/// them, `OMP_NUM_THREADS` (libtorch's threads; torchrun sets 1) and `RAYON_NUM_THREADS` (the
/// data pipeline's) give each process an equal share of this machine's cores, so that the
/// processes do not fight over them. A launcher that is killed takes its ranks with it. When one fails, the others are stopped
/// (as torchrun does) and the error names the first rank that failed and how.
pub fn launch(spec: &Launch, program: &Path, args: &[OsString]) -> Result<()> {
    if spec.nproc_per_node == 0 || spec.nnodes == 0 || spec.node_rank >= spec.nnodes {
        return Err(Error::Distributed(format!(
            "launch: {} processes per node on node {} of {}: need at least one process and a node rank below the node count",
            spec.nproc_per_node, spec.node_rank, spec.nnodes
        )));
    }
    let port = match spec.master_port {
        Some(p) => p,
        None if spec.nnodes == 1 => free_port()?,
        None => {
            return Err(Error::Distributed(
                "launch: several nodes need --master-port (the same on every node)".into(),
            ))
        }
    };
    let world = spec.nproc_per_node * spec.nnodes;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .div_ceil(spec.nproc_per_node)
        .max(1);
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..spec.nproc_per_node {
        let rank = spec.node_rank * spec.nproc_per_node + local;
        let mut command = Command::new(program);
        // libtorch's threads and the data pipeline's (rayon) share the cores.
        for var in ["OMP_NUM_THREADS", "RAYON_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                command.env(var, threads.to_string());
            }
        }
        // A rank outlives no launcher: killed with it (Linux), not left training alone.
        // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("MASTER_ADDR", &spec.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", spec.nproc_per_node.to_string())
            .env("GROUP_RANK", spec.node_rank.to_string())
            .env(LAUNCHED_VAR, "1")
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop(&mut children);
                return Err(Error::Distributed(format!(
                    "launch: starting rank {rank} ({}): {e}",
                    program.display()
                )));
            }
        }
    }
    let mut failure: Option<String> = None;
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() && failure.is_none() {
                        failure = Some(format!("rank {rank} exited with {status}"));
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let (rank, _) = children.remove(i);
                    failure.get_or_insert(format!("rank {rank}: {e}"));
                }
            }
        }
        if failure.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(f) = failure {
        let others = children.len();
        stop(&mut children);
        return Err(Error::Distributed(if others > 0 {
            format!("{f}; stopped the {others} other local rank(s)")
        } else {
            f
        }));
    }
    Ok(())
}

/// Stops the processes (SIGTERM, then SIGKILL after 5 s) and reaps them.
fn stop(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        // SAFETY: signalling a child this process started and has not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, c) in children.iter_mut() {
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_torchrun_variables() {
        let env = Env::from_vars(vars(&[
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
        ]));
        assert_eq!(
            env.ok().flatten(),
            Some(Env {
                master_addr: "10.0.0.1".into(),
                master_port: 29500,
                rank: 3,
                world_size: 4,
                local_rank: 1
            })
        );
        // Slurm's names when torchrun's are absent.
        let env = Env::from_vars(vars(&[
            ("MASTER_ADDR", "n1"),
            ("MASTER_PORT", "1234"),
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "1"),
        ]));
        assert_eq!(
            env.ok().flatten().map(|e| (e.rank, e.world_size, e.local_rank)),
            Some((1, 2, 1))
        );
        // No job, or a job of one without a master: a single process.
        assert!(matches!(Env::from_vars(vars(&[])), Ok(None)));
        assert!(matches!(Env::from_vars(vars(&[("WORLD_SIZE", "1")])), Ok(None)));
    }

    #[test]
    fn refuses_inconsistent_variables_by_name() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("WORLD_SIZE", "2"), ("MASTER_PORT", "1"), ("RANK", "0")], "MASTER_ADDR"),
            (&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("RANK", "0")], "MASTER_PORT"),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "70000"),
                    ("RANK", "0"),
                ],
                "MASTER_PORT",
            ),
            (&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")], "RANK"),
            (
                &[("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1"), ("RANK", "2")],
                "RANK=2",
            ),
            (&[("WORLD_SIZE", "two")], "WORLD_SIZE"),
            (&[("WORLD_SIZE", "0")], "WORLD_SIZE=0"),
        ];
        for (pairs, named) in cases {
            match Env::from_vars(vars(pairs)) {
                Err(e) => assert!(e.to_string().contains(named), "{pairs:?}: {e}"),
                Ok(v) => panic!("{pairs:?} accepted: {v:?}"),
            }
        }
    }

    #[test]
    fn buckets_respect_kind_and_size() {
        let t = |n: i64, k: Kind| Tensor::zeros([n], (k, Device::Cpu));
        let tensors =
            vec![t(10, Kind::Float), t(10, Kind::Double), t(10, Kind::Float), t(10, Kind::Float)];
        // 40 bytes per f32 tensor: a cap of 80 holds two of them.
        let plan = buckets(&tensors, 80);
        let mut flat: Vec<usize> = plan.iter().flatten().copied().collect();
        flat.sort();
        assert_eq!(flat, vec![0, 1, 2, 3]);
        assert!(
            plan.contains(&vec![0, 2]) && plan.contains(&vec![3]) && plan.contains(&vec![1]),
            "{plan:?}"
        );
        // One tensor larger than the cap still gets a bucket of its own.
        assert_eq!(buckets(&[t(100, Kind::Float)], 8), vec![vec![0]]);
    }
}
