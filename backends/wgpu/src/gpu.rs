//! One wgpu device and queue per ggml device, with the byte-level transfers ggml's buffer
//! interface needs and the compute pipelines, made on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::shaders::{self, Kernel};

/// Size of one node's parameter block in the per-graph parameter buffer.
pub(crate) const PARAM_SLOT: u64 = 256;

/// A wgpu device with its queue, limits and compiled pipelines.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub limits: wgpu::Limits,
    /// A software renderer (lavapipe, WARP): kernels without workgroup barriers are chosen.
    pub software: bool,
    /// The parameter blocks are bound as a read-only storage buffer, where the device allows
    /// one more storage buffer than the kernels' tensors take; else as a uniform buffer. As a
    /// uniform buffer at a dynamic offset, Mesa 22.3's lavapipe kept ~30 KB of every dispatch
    /// it ran (RSS +22 MB per SmolLM2 token) and decoded 30 % slower.
    pub params_in_storage: bool,
    /// Bind group layouts by number of tensor buffers (1..=4), after the parameter blocks.
    layouts: Vec<wgpu::BindGroupLayout>,
    pipeline_layouts: Vec<wgpu::PipelineLayout>,
    pipelines: Mutex<HashMap<Kernel, Arc<wgpu::ComputePipeline>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

pub(crate) const MAX_STORAGE: usize = 4;

impl Gpu {
    pub fn new(adapter: &wgpu::Adapter) -> Result<Self, String> {
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("graft-wgpu"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| format!("requesting a wgpu device: {e}"))?;
        // Errors outside an error scope are kept, never panicked on: they surface as a failed
        // compute or transfer.
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        // GRAFT_WGPU_PARAMS=uniform takes the uniform path on any device (tests run both).
        let params_in_storage = std::env::var("GRAFT_WGPU_PARAMS").as_deref() != Ok("uniform")
            && limits.max_storage_buffers_per_shader_stage as usize > MAX_STORAGE;
        let mut layouts = Vec::new();
        let mut pipeline_layouts = Vec::new();
        for n in 1..=MAX_STORAGE {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: if params_in_storage {
                        wgpu::BufferBindingType::Storage { read_only: true }
                    } else {
                        wgpu::BufferBindingType::Uniform
                    },
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(PARAM_SLOT),
                },
                count: None,
            }];
            for b in 0..n {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: 1 + b as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            });
            pipeline_layouts.push(
                device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                }),
            );
            layouts.push(layout);
        }
        Ok(Self {
            device,
            queue,
            limits,
            software: adapter.get_info().device_type == wgpu::DeviceType::Cpu,
            params_in_storage,
            layouts,
            pipeline_layouts,
            pipelines: Mutex::default(),
            errors,
        })
    }

    /// The bind group layout for `n` storage buffers.
    pub fn layout(&self, n: usize) -> &wgpu::BindGroupLayout {
        &self.layouts[n - 1]
    }

    /// The compute pipeline of `kernel`, compiled on first use.
    pub fn pipeline(&self, kernel: &Kernel) -> Result<Arc<wgpu::ComputePipeline>, String> {
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| "pipeline cache poisoned")?;
        if let Some(p) = cache.get(kernel) {
            return Ok(p.clone());
        }
        let source = shaders::source(kernel, self.params_in_storage);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name),
                layout: Some(&self.pipeline_layouts[kernel.storage_buffers() - 1]),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!("compiling kernel {}: {e}", kernel.name));
        }
        let p = Arc::new(pipeline);
        cache.insert(kernel.clone(), p.clone());
        Ok(p)
    }

    /// Errors wgpu reported outside any scope since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Waits for all submitted work.
    pub fn wait(&self) -> Result<(), String> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| format!("waiting for the device: {e}"))
    }

    /// Reads `out.len()` bytes at `offset` of `buffer`.
    pub fn read(&self, buffer: &wgpu::Buffer, offset: u64, out: &mut [u8]) -> Result<(), String> {
        if out.is_empty() {
            return Ok(());
        }
        let start = offset & !3;
        let end = (offset + out.len() as u64).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("graft-wgpu readback"),
            size: end - start,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, start, &staging, 0, end - start);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| "the readback never completed".to_string())?
            .map_err(|e| format!("mapping the readback buffer: {e}"))?;
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| format!("reading the readback buffer: {e}"))?;
            let skip = (offset - start) as usize;
            out.copy_from_slice(&view[skip..skip + out.len()]);
        }
        staging.unmap();
        Ok(())
    }

    /// Writes `data` at `offset` of `buffer`. wgpu writes whole 4-byte words, so the bytes
    /// around an unaligned start or end are read first and written back unchanged.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        crate::UPLOADED.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let end = offset + data.len() as u64;
        let (a_start, a_end) = (offset & !3, end.next_multiple_of(4));
        if a_start == offset && a_end == end {
            self.queue.write_buffer(buffer, offset, data);
            return Ok(());
        }
        let mut words = vec![0u8; (a_end - a_start) as usize];
        if a_start != offset {
            self.read(buffer, a_start, &mut words[..4])?;
        }
        if a_end != end {
            let n = words.len();
            self.read(buffer, a_end - 4, &mut words[n - 4..])?;
        }
        let skip = (offset - a_start) as usize;
        words[skip..skip + data.len()].copy_from_slice(data);
        self.queue.write_buffer(buffer, a_start, &words);
        Ok(())
    }
}
