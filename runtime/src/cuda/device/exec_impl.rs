//! [`Executor`] for [`CudaExecutor`]: allocation, transfers, the paged cache and launches
//! through the backend-neutral interface.

use std::marker::PhantomData;

use tpla_codegen::{Config, KernelDef};

use super::buffers::{as_bytes, from_bytes};
use super::driver_err;
use super::{CudaExecutor, CudaPagedCache, CudaTensor};
use crate::exec::{ArgSpace, Executor, KernelArg, PagedArg, PagedGeometry, TensorArg};
use crate::paged::HostPagedCache;
use crate::tensor::{Element, HostTensor};
use crate::RuntimeError;

pub(super) fn paged_arg<T: Element>(c: &CudaPagedCache<T>, writable: bool) -> KernelArg<'_> {
    let geometry = PagedGeometry {
        dtype: T::DTYPE,
        num_pages: c.num_pages,
        page_size: c.page_size,
        row: c.row,
        batch: c.host_seq_lens.len(),
        pages_per_seq: c.pages_per_seq,
    };
    // SAFETY: the addresses are `c`'s own device buffers (borrowed by the caller, mutably when
    // `writable`), sized for this geometry; the host tables mirror the device tables (every
    // write goes through `set_seq_lens`/`set_block_table`, which update both), so each launch
    // checks the entries the lengths reach.
    KernelArg::Paged(unsafe {
        PagedArg::new(
            c.data_ptr,
            c.block_table_ptr,
            c.seq_lens_ptr,
            geometry,
            Some((&c.host_block_table, &c.host_seq_lens)),
            writable,
            ArgSpace::Device,
        )
    })
}

impl Executor for CudaExecutor {
    fn compute_units(&self) -> usize {
        self.info.sm_count as usize
    }

    fn resident_programs(
        &self,
        kernel: &dyn KernelDef,
        config: &Config,
    ) -> Result<usize, RuntimeError> {
        let k = self.compile(kernel, config)?;
        let n = k
            .func
            .occupancy_max_active_blocks_per_multiprocessor(
                k.compiled.source.block_threads,
                k.compiled.source.shared_bytes as usize,
                None,
            )
            .map_err(|e| driver_err("cuOccupancyMaxActiveBlocksPerMultiprocessor", e))?;
        Ok((n as usize).max(1))
    }

    fn hopper_schedules(&self) -> bool {
        self.target().wgmma
    }

    fn device_identity(&self) -> String {
        let i = &self.info;
        format!(
            "cuda {} sm_{}{} {} SMs driver {}",
            i.name, i.compute_capability.0, i.compute_capability.1, i.sm_count, i.driver_version
        )
    }

    type Tensor<T: Element> = CudaTensor<T>;
    type Paged<T: Element> = CudaPagedCache<T>;

    fn tensor_arg<T: Element>(t: &CudaTensor<T>) -> KernelArg<'_> {
        // SAFETY: `t.ptr` is `t`'s own device buffer of `len · size_of::<T>()` bytes (at least),
        // kept alive and unwritten by the shared borrow.
        KernelArg::Tensor(unsafe {
            TensorArg::new(t.ptr, T::DTYPE, &t.shape, false, ArgSpace::Device)
        })
    }
    fn tensor_arg_mut<T: Element>(t: &mut CudaTensor<T>) -> KernelArg<'_> {
        // SAFETY: as above; the exclusive borrow makes this the only access while it lives.
        KernelArg::Tensor(unsafe {
            TensorArg::new(t.ptr, T::DTYPE, &t.shape, true, ArgSpace::Device)
        })
    }
    fn paged_arg<T: Element>(c: &CudaPagedCache<T>) -> KernelArg<'_> {
        paged_arg(c, false)
    }
    fn paged_arg_mut<T: Element>(c: &mut CudaPagedCache<T>) -> KernelArg<'_> {
        paged_arg(c, true)
    }

    fn launch(
        &self,
        kernel: &dyn KernelDef,
        config: &Config,
        args: &[KernelArg<'_>],
    ) -> Result<(), RuntimeError> {
        let k = self.compile(kernel, config)?;
        self.launch_loaded(&k, args)
    }

    fn reshape<T: Element>(t: &mut CudaTensor<T>, shape: &[usize]) -> Result<(), RuntimeError> {
        t.reshape(shape)
    }

    fn alloc<T: Element>(&self, shape: &[usize]) -> Result<CudaTensor<T>, RuntimeError> {
        let n: usize = shape.iter().product();
        let (buf, ptr) = self.alloc_bytes(n * std::mem::size_of::<T>())?;
        Ok(CudaTensor {
            buf,
            ptr,
            shape: shape.to_vec(),
            _t: PhantomData,
        })
    }

    fn upload<T: Element>(&self, t: &HostTensor<T>) -> Result<CudaTensor<T>, RuntimeError> {
        let (buf, ptr) = self.upload_bytes(as_bytes(t.data()))?;
        Ok(CudaTensor {
            buf,
            ptr,
            shape: t.shape().to_vec(),
            _t: PhantomData,
        })
    }

    fn download<T: Element>(&self, t: &CudaTensor<T>) -> Result<HostTensor<T>, RuntimeError> {
        let bytes = self.download_bytes(&t.buf, t.len() * std::mem::size_of::<T>())?;
        HostTensor::from_vec(&t.shape, from_bytes(&bytes))
            .map_err(|e| RuntimeError::InvalidInput(e.to_string()))
    }

    fn upload_paged<T: Element>(
        &self,
        c: &HostPagedCache<T>,
    ) -> Result<CudaPagedCache<T>, RuntimeError> {
        let (data, data_ptr) = self.upload_bytes(as_bytes(c.data()))?;
        let (block_table, block_table_ptr) = self.upload_bytes(as_bytes(c.block_table()))?;
        let (seq_lens, seq_lens_ptr) = self.upload_bytes(as_bytes(c.seq_lens()))?;
        Ok(CudaPagedCache {
            data,
            data_ptr,
            block_table,
            block_table_ptr,
            seq_lens,
            seq_lens_ptr,
            host_block_table: c.block_table().to_vec(),
            host_seq_lens: c.seq_lens().to_vec(),
            lens_stage: Default::default(),
            num_pages: c.num_pages(),
            page_size: c.page_size(),
            row: c.row(),
            pages_per_seq: c.pages_per_seq(),
            _t: PhantomData,
        })
    }

    fn download_paged<T: Element>(
        &self,
        c: &CudaPagedCache<T>,
    ) -> Result<HostPagedCache<T>, RuntimeError> {
        let n = c.num_pages * c.page_size * c.row;
        let bytes = self.download_bytes(&c.data, n * std::mem::size_of::<T>())?;
        let lens: Vec<usize> = c.host_seq_lens.iter().map(|&l| l as usize).collect();
        HostPagedCache::from_parts(
            from_bytes(&bytes),
            c.page_size,
            c.row,
            c.host_block_table.clone(),
            &lens,
        )
    }

    fn set_seq_lens<T: Element>(
        &self,
        c: &mut CudaPagedCache<T>,
        lens: &[usize],
    ) -> Result<(), RuntimeError> {
        if lens.len() != c.host_seq_lens.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} sequence lengths for a batch of {}",
                lens.len(),
                c.host_seq_lens.len()
            )));
        }
        let capacity = c.capacity();
        if let Some(&len) = lens.iter().find(|&&l| l > capacity) {
            return Err(RuntimeError::LengthPastCache { len, capacity });
        }
        let v: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        if v.is_empty() {
            return Ok(());
        }
        let bytes = as_bytes(&v);
        let staged = c
            .lens_stage
            .stage(self.stream.context(), bytes)
            .map_err(|e| driver_err("staging the sequence lengths", e))?;
        let mut view = c.seq_lens.slice_mut(0..bytes.len());
        // From page-locked memory the copy is queued on the stream without the host waiting.
        self.stream
            .memcpy_htod(staged, &mut view)
            .map_err(|e| driver_err("host-to-device copy", e))?;
        c.host_seq_lens = v;
        Ok(())
    }

    fn synchronize(&self) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))
    }

    fn order_after(&self, other: &Self) -> Result<(), RuntimeError> {
        if self.stream.cu_stream() == other.stream.cu_stream() {
            return Ok(()); // one stream is already in order
        }
        self.stream
            .join(&other.stream)
            .map_err(|e| driver_err("ordering one stream after another", e))
    }

    fn backend_name(&self) -> String {
        format!(
            "cuda:{} ({}, {}, {} SMs)",
            self.info.ordinal,
            self.info.name,
            self.target.arch_name(),
            self.info.sm_count
        )
    }
}
