//! Safetensors I/O: read named tensors of one or more files as f64, write f32/bf16/f64 tensors.

use super::error::{ModelError, Result};
use super::fsio::OutputFile;
use super::linalg::Mat;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One or more safetensors files read into memory, searched by tensor name.
pub struct Checkpoint {
    files: Vec<(PathBuf, Vec<u8>)>,
    index: HashMap<String, usize>,
}

impl Checkpoint {
    /// Open a `.safetensors` file, or every `*.safetensors` file of a directory (sharded
    /// checkpoints such as `model-00001-of-000163.safetensors`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut paths = Vec::new();
        if path.is_dir() {
            let rd = std::fs::read_dir(path).map_err(|e| ModelError::io(path, e))?;
            for ent in rd {
                let p = ent.map_err(|e| ModelError::io(path, e))?.path();
                if p.extension().is_some_and(|e| e == "safetensors") {
                    paths.push(p);
                }
            }
            paths.sort();
        } else {
            paths.push(path.to_path_buf());
        }
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for p in paths {
            let bytes = std::fs::read(&p).map_err(|e| ModelError::io(&p, e))?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
                path: p.display().to_string(),
                detail: e.to_string(),
            })?;
            for name in st.names() {
                index.insert(name.clone(), files.len());
            }
            drop(st);
            files.push((p, bytes));
        }
        Ok(Checkpoint { files, index })
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names (sorted).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    /// Shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let &fi = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })?;
        let (p, bytes) = &self.files[fi];
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
            path: p.display().to_string(),
            detail: e.to_string(),
        })?;
        st.tensor(name).map_err(|e| ModelError::Safetensors {
            path: p.display().to_string(),
            detail: e.to_string(),
        })
    }

    /// Read a tensor of exactly `shape` as f64 values (row-major).
    pub fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let v = self.view(name)?;
        if v.shape() != shape {
            return Err(ModelError::WrongShape {
                name: name.into(),
                expected: shape.to_vec(),
                got: v.shape().to_vec(),
            });
        }
        to_f64(name, v.dtype(), v.data())
    }

    /// Read a 2-D torch `Linear` weight `[out, in]` and return it as `[in, out]` (x · W).
    pub fn read_linear(&self, name: &str, out: usize, inp: usize) -> Result<Mat> {
        let d = self.read(name, &[out, inp])?;
        Ok(Mat {
            rows: out,
            cols: inp,
            data: d,
        }
        .t())
    }
}

fn to_f64(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f64>> {
    Ok(match dtype {
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: name.into(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// Storage dtype of written tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutDtype {
    /// bfloat16 (what the GPU kernels read).
    Bf16,
    /// f32.
    F32,
    /// f64 (lossless, for tests).
    F64,
}

/// Tensors to be written: name -> (shape, f64 values).
#[derive(Default)]
pub struct TensorWriter {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl TensorWriter {
    /// Add a tensor given row-major values.
    pub fn put(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f64>) {
        self.tensors.insert(name.into(), (shape, data));
    }

    /// Add an `[in, out]` matrix as a torch `Linear` weight `[out, in]`.
    pub fn put_linear(&mut self, name: impl Into<String>, w: &Mat) {
        let t = w.t();
        self.put(name, vec![t.rows, t.cols], t.data);
    }

    /// Serialise to bytes.
    pub fn to_bytes(
        &self,
        dtype: OutDtype,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<Vec<u8>> {
        let (dt, enc): (Dtype, fn(f64, &mut Vec<u8>)) = match dtype {
            OutDtype::Bf16 => (Dtype::BF16, |v, b| {
                b.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes())
            }),
            OutDtype::F32 => (Dtype::F32, |v, b| {
                b.extend_from_slice(&(v as f32).to_le_bytes())
            }),
            OutDtype::F64 => (Dtype::F64, |v, b| b.extend_from_slice(&v.to_le_bytes())),
        };
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, (s, d))| {
                let mut b = Vec::with_capacity(d.len() * dt.size());
                d.iter().for_each(|&v| enc(v, &mut b));
                (n.clone(), s.clone(), b)
            })
            .collect();
        let mut views = Vec::new();
        for (n, s, b) in &encoded {
            let v = TensorView::new(dt, s.clone(), b).map_err(|e| ModelError::Safetensors {
                path: n.clone(),
                detail: e.to_string(),
            })?;
            views.push((n.clone(), v));
        }
        safetensors::serialize(views, &metadata).map_err(|e| ModelError::Safetensors {
            path: "<memory>".into(),
            detail: e.to_string(),
        })
    }

    /// Serialise to a file, atomically (a temporary file beside it, then a rename).
    pub fn write(
        &self,
        path: impl AsRef<Path>,
        dtype: OutDtype,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let out = OutputFile::prepare(path.as_ref())?;
        out.commit(&self.to_bytes(dtype, metadata)?)
    }

    /// Number of values held (all tensors).
    pub fn values(&self) -> usize {
        self.tensors.values().map(|(_, d)| d.len()).sum()
    }
}
