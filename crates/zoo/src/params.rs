//! Where a model's tensors live: one candle `VarMap` keyed by timm's own state_dict names, so a
//! checkpoint loads with no renaming and every parameter is a `Var` an optimizer can update.
//! BatchNorm running statistics are vars too (they are saved and loaded with the weights) but
//! are marked as buffers: `trainable_vars` leaves them out.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarMap};

use crate::error::{Error, Result};

/// The tensors of one model, by name.
#[derive(Clone)]
pub struct ParamStore {
    map: VarMap,
    buffers: Arc<Mutex<BTreeSet<String>>>,
    /// What the model asked for while being built, and the preloaded tensors it found in
    /// another shape (`check_preloaded`).
    requested: Arc<Mutex<BTreeSet<String>>>,
    mis_shaped: Arc<Mutex<Vec<String>>>,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore").field("tensors", &self.names().len()).field("device", &self.device).finish()
    }
}

impl ParamStore {
    /// An empty store of f32 tensors on `device`.
    pub fn new(device: &Device) -> Self {
        Self::with_dtype(device, DType::F32)
    }

    /// An empty store of `dtype` tensors (bf16 or f16 for inference of the large models).
    pub fn with_dtype(device: &Device, dtype: DType) -> Self {
        Self {
            map: VarMap::new(),
            buffers: Arc::default(),
            requested: Arc::default(),
            mis_shaped: Arc::default(),
            device: device.clone(),
            dtype,
        }
    }

    /// The tensors' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A builder rooted at the model's top level.
    pub fn root(&self) -> ParamBuilder<'_> {
        ParamBuilder { store: self, prefix: String::new() }
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        names.sort();
        names
    }

    /// The var of `name`.
    pub fn var(&self, name: &str) -> Option<Var> {
        self.lock().ok().and_then(|m| m.get(name).cloned())
    }

    /// Whether `name` is a buffer (running statistic) rather than a trainable parameter.
    pub fn is_buffer(&self, name: &str) -> bool {
        self.buffers.lock().map(|b| b.contains(name)).unwrap_or(false)
    }

    /// The trainable parameters (everything but the running statistics), sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let Ok(map) = self.lock() else { return Vec::new() };
        let mut vars: Vec<(String, Var)> =
            map.iter().filter(|(name, _)| !self.is_buffer(name)).map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Number of trainable scalars, as timm counts parameters.
    pub fn parameter_count(&self) -> usize {
        self.trainable_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Var>>> {
        self.map.data().lock().map_err(|_| Error::ParamStore("a thread panicked while holding it".into()))
    }

    /// Puts a checkpoint's tensor in place (in the store's dtype) before the model is built, so
    /// that the builder takes it instead of allocating zeros.
    pub(crate) fn preload(&self, name: &str, tensor: &Tensor) -> Result<()> {
        let value = if tensor.dtype() == self.dtype { tensor.clone() } else { tensor.to_dtype(self.dtype)? };
        let var = Var::from_tensor(&value)?;
        self.lock()?.insert(name.to_string(), var);
        Ok(())
    }

    /// What the model asked for while being built.
    pub(crate) fn requested(&self) -> BTreeSet<String> {
        self.requested.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The preloaded tensors the model found in another shape, described.
    pub(crate) fn mis_shaped(&self) -> Vec<String> {
        self.mis_shaped.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Drops a tensor (one preloaded that the model does not use).
    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        self.lock()?.remove(name);
        Ok(())
    }

    /// Replaces (or adds) a trainable tensor, returning the tensor the model should hold.
    pub(crate) fn replace(&self, name: &str, value: &Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(value)?;
        let tensor = var.as_tensor().clone();
        self.lock()?.insert(name.to_string(), var);
        Ok(tensor)
    }

    pub(crate) fn get(&self, shape: Shape, name: &str, buffer: bool, init: Init) -> Result<Tensor> {
        if buffer && let Ok(mut buffers) = self.buffers.lock() {
            buffers.insert(name.to_string());
        }
        if let Ok(mut requested) = self.requested.lock() {
            requested.insert(name.to_string());
        }
        if let Some(var) = self.var(name)
            && var.shape() != &shape
        {
            // A preloaded tensor of another shape: noted, and the model built with zeros so that
            // every problem is reported at once.
            if let Ok(mut mis_shaped) = self.mis_shaped.lock() {
                mis_shaped.push(format!("{name} (file {:?}, model {:?})", var.dims(), shape.dims()));
            }
            self.lock()?.remove(name);
        }
        Ok(self.map.get(shape, name, init, self.dtype, &self.device)?)
    }
}

/// Creates a model's tensors under a name prefix, mirroring the checkpoint's nesting
/// (`store.root().pp("layer1").pp(0).pp("conv1")`).
#[derive(Clone)]
pub struct ParamBuilder<'a> {
    store: &'a ParamStore,
    prefix: String,
}

impl std::fmt::Debug for ParamBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamBuilder").field("prefix", &self.prefix).finish()
    }
}

impl<'a> ParamBuilder<'a> {
    /// The builder for a sub-module.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { store: self.store, prefix }
    }

    /// The full name of a tensor here.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// A trainable parameter (zeros until a checkpoint or an initialiser fills it).
    pub fn param(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.store.get(shape.into(), &self.path(name), false, Init::Const(0.0))
    }

    /// A buffer (not trained) with a constant start value, and its var for in-place updates.
    pub fn buffer(&self, shape: impl Into<Shape>, name: &str, value: f64) -> Result<Var> {
        let path = self.path(name);
        self.store.get(shape.into(), &path, true, Init::Const(value))?;
        self.store.var(&path).ok_or_else(|| Error::ParamStore(format!("buffer {path} vanished")))
    }

    /// The store this builder fills.
    pub fn store(&self) -> &'a ParamStore {
        self.store
    }
}
