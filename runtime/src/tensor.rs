//! Host tensors and the element types kernels accept.

use tpla_codegen::ir::DType;

/// A Rust type that can be a kernel tensor's element.
pub trait Element: Copy + Send + Sync + Default + 'static {
    /// The IR dtype it corresponds to.
    const DTYPE: DType;
    /// Converts from f32 (rounding to nearest even for bf16).
    fn from_f32(x: f32) -> Self;
    /// Converts to f32.
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl Element for i32 {
    const DTYPE: DType = DType::I32;
    fn from_f32(x: f32) -> Self {
        x as i32
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// A dense row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

/// A host tensor whose data length does not match its shape.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("tensor data has {len} elements but shape {shape:?} needs {expected}")]
pub struct ShapeError {
    /// The shape given.
    pub shape: Vec<usize>,
    /// Elements the shape needs.
    pub expected: usize,
    /// Elements given.
    pub len: usize,
}

impl<T: Element> HostTensor<T> {
    /// Gives the tensor another shape with the same number of elements (no data moves); on a
    /// count mismatch it is an error and the tensor is unchanged.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<(), ShapeError> {
        let expected: usize = shape.iter().product();
        if expected != self.data.len() {
            return Err(ShapeError {
                shape: shape.to_vec(),
                expected,
                len: self.data.len(),
            });
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// A tensor of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: T) -> Self {
        HostTensor {
            shape: shape.to_vec(),
            data: vec![value; shape.iter().product()],
        }
    }
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, T::default())
    }
    /// Wraps `data` (row-major) as a tensor of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self, ShapeError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ShapeError {
                shape: shape.to_vec(),
                expected,
                len: data.len(),
            });
        }
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }
    /// Converts f32 values into a tensor of `T`.
    pub fn from_f32(shape: &[usize], data: &[f32]) -> Result<Self, ShapeError> {
        Self::from_vec(shape, data.iter().map(|&x| T::from_f32(x)).collect())
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// The elements, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// The elements converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.iter().map(|x| x.to_f32()).collect()
    }
    /// Consumes the tensor and returns its elements.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
}
