//! Launch-time checks: what only the arguments can tell (runtime dims, dtypes, paged tables).

use crate::ir::{DType, Kernel, PagedFormat, ParamDim, ParamKind};

/// What a backend knows about one argument before launching.
#[derive(Clone, Copy, Debug)]
pub enum ArgDesc<'a> {
    /// A dense tensor.
    Tensor {
        /// Element type of the buffer.
        dtype: DType,
        /// Its shape.
        shape: &'a [usize],
        /// Whether it was passed for writing.
        writable: bool,
    },
    /// A paged cache.
    Paged {
        /// Element type of the page data.
        dtype: DType,
        /// Number of pages in `data`.
        num_pages: usize,
        /// Tokens per page.
        page_size: usize,
        /// Elements per token row.
        row: usize,
        /// Sequences.
        batch: usize,
        /// Block-table entries per sequence.
        pages_per_seq: usize,
        /// Host view of the block table `[batch, pages_per_seq]` when available.
        block_table: Option<&'a [i32]>,
        /// Host view of the sequence lengths `[batch]` when available.
        seq_lens: Option<&'a [i32]>,
        /// Whether it was passed for writing.
        writable: bool,
        /// Whether it carries a per-sequence split table (`chunk [batch]`, i32).
        chunks: bool,
        /// How its rows are stored in the pool (the bytes of a row follow from it).
        format: PagedFormat,
    },
    /// An f32 scalar.
    F32(f32),
    /// An i32 scalar.
    I32(i32),
}

/// Why a launch was refused. Nothing was run.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LaunchError {
    /// Wrong number of arguments.
    #[error("kernel `{kernel}` takes {expected} arguments, got {got}")]
    ArgCount {
        /// Kernel name.
        kernel: String,
        /// Parameters declared.
        expected: usize,
        /// Arguments given.
        got: usize,
    },
    /// An argument of the wrong kind (tensor, paged, scalar) or mutability.
    #[error("argument `{param}`: expected {expected}, got {got}")]
    Kind {
        /// Parameter name.
        param: String,
        /// What was expected.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Wrong element type.
    #[error("argument `{param}`: dtype {got}, expected {expected}")]
    DType {
        /// Parameter name.
        param: String,
        /// Declared dtype.
        expected: DType,
        /// Given dtype.
        got: DType,
    },
    /// Wrong shape.
    #[error("argument `{param}`: {why}")]
    Shape {
        /// Parameter name.
        param: String,
        /// What is wrong.
        why: String,
    },
    /// Two arguments disagree on a runtime dimension.
    #[error("dimension `{dim}` is {first} from one argument and {second} from `{param}`")]
    DimMismatch {
        /// Dimension name.
        dim: String,
        /// First value seen.
        first: usize,
        /// Conflicting value.
        second: usize,
        /// Where the conflict came from.
        param: String,
    },
    /// A paged cache whose tables are inconsistent.
    #[error("paged cache `{param}`: {why}")]
    Paged {
        /// Parameter name.
        param: String,
        /// What is wrong.
        why: String,
    },
    /// A runtime dimension no argument determines, or a grid that is empty or too large.
    #[error("launch of `{kernel}`: {why}")]
    Grid {
        /// Kernel name.
        kernel: String,
        /// What is wrong.
        why: String,
    },
}

/// The resolved launch: runtime dimension values and the grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Value of each runtime dimension, in [`Kernel::dims`] order.
    pub dims: Vec<i64>,
    /// Programs per grid axis.
    pub grid: [usize; 3],
}

impl LaunchPlan {
    /// Total number of programs.
    pub fn programs(&self) -> usize {
        self.grid.iter().product()
    }
}

/// Checks `args` against `kernel`'s parameters and resolves the runtime dims and grid.
pub fn check_launch(kernel: &Kernel, args: &[ArgDesc<'_>]) -> Result<LaunchPlan, LaunchError> {
    if args.len() != kernel.params.len() {
        return Err(LaunchError::ArgCount {
            kernel: kernel.name.clone(),
            expected: kernel.params.len(),
            got: args.len(),
        });
    }
    let mut dims: Vec<Option<usize>> = vec![None; kernel.dims.len()];
    for (p, a) in kernel.params.iter().zip(args) {
        let kind_err = |got: &str| LaunchError::Kind {
            param: p.name.clone(),
            expected: describe(&p.kind),
            got: got.to_string(),
        };
        match (&p.kind, a) {
            (
                ParamKind::Tensor {
                    dtype,
                    dims: pd,
                    writable,
                },
                ArgDesc::Tensor {
                    dtype: d,
                    shape,
                    writable: w,
                },
            ) => {
                if *writable && !*w {
                    return Err(kind_err("a read-only tensor"));
                }
                if dtype != d {
                    return Err(LaunchError::DType {
                        param: p.name.clone(),
                        expected: *dtype,
                        got: *d,
                    });
                }
                if pd.len() != shape.len() {
                    return Err(LaunchError::Shape {
                        param: p.name.clone(),
                        why: format!(
                            "rank {} (shape {shape:?}), expected rank {}",
                            shape.len(),
                            pd.len()
                        ),
                    });
                }
                for (axis, (want, got)) in pd.iter().zip(shape.iter()).enumerate() {
                    match want {
                        ParamDim::Const(c) if c != got => {
                            return Err(LaunchError::Shape {
                                param: p.name.clone(),
                                why: format!(
                                    "axis {axis} is {got}, expected {c} (shape {shape:?})"
                                ),
                            });
                        }
                        ParamDim::Runtime(r) => match dims[*r] {
                            None => dims[*r] = Some(*got),
                            Some(first) if first != *got => {
                                return Err(LaunchError::DimMismatch {
                                    dim: kernel.dims[*r].clone(),
                                    first,
                                    second: *got,
                                    param: p.name.clone(),
                                });
                            }
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            (
                ParamKind::Paged {
                    dtype,
                    row,
                    writable,
                    chunked,
                    format,
                },
                ArgDesc::Paged {
                    dtype: d,
                    num_pages,
                    page_size,
                    row: r,
                    batch,
                    pages_per_seq,
                    block_table,
                    seq_lens,
                    writable: w,
                    chunks,
                    format: f,
                },
            ) => {
                if *writable && !*w {
                    return Err(kind_err("a read-only paged cache"));
                }
                if chunked != chunks {
                    return Err(LaunchError::Paged {
                        param: p.name.clone(),
                        why: if *chunked {
                            "the kernel was built with KV_CHUNKS = 1 and needs a split table, \
                             but the cache has none"
                                .into()
                        } else {
                            "the cache carries a split table, but the kernel was built without \
                             KV_CHUNKS = 1"
                                .into()
                        },
                    });
                }
                if format != f {
                    return Err(LaunchError::Paged {
                        param: p.name.clone(),
                        why: format!(
                            "the kernel reads {format} of {} bytes, but the cache holds {f} of \
                             {} bytes",
                            format.row_bytes(*dtype, *row),
                            f.row_bytes(*d, *r)
                        ),
                    });
                }
                if dtype != d {
                    return Err(LaunchError::DType {
                        param: p.name.clone(),
                        expected: *dtype,
                        got: *d,
                    });
                }
                check_paged(
                    &p.name,
                    *row,
                    *r,
                    *num_pages,
                    *page_size,
                    *batch,
                    *pages_per_seq,
                    *block_table,
                    *seq_lens,
                )?;
            }
            (ParamKind::Scalar { dtype: DType::F32 }, ArgDesc::F32(_))
            | (ParamKind::Scalar { dtype: DType::I32 }, ArgDesc::I32(_)) => {}
            (_, other) => return Err(kind_err(&describe_arg(other))),
        }
    }
    let mut values = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        match d {
            Some(v) => values.push(*v as i64),
            None => {
                return Err(LaunchError::Grid {
                    kernel: kernel.name.clone(),
                    why: format!("no argument determines dimension `{}`", kernel.dims[i]),
                });
            }
        }
    }
    let mut grid = [1usize; 3];
    for (axis, g) in kernel.grid.iter().enumerate() {
        let v = g.eval_dims(&values).ok_or_else(|| LaunchError::Grid {
            kernel: kernel.name.clone(),
            why: "grid is not computable from dims".into(),
        })?;
        if !(0..=i32::MAX as i64).contains(&v) {
            return Err(LaunchError::Grid {
                kernel: kernel.name.clone(),
                why: format!("grid axis {axis} = {v}"),
            });
        }
        grid[axis] = v as usize;
    }
    Ok(LaunchPlan { dims: values, grid })
}

/// The first entry of `row` that is not a page of `0..num_pages`, if any. Every launch on a
/// cache with host tables checks every entry its lengths reach (32K entries at 64 sequences of
/// 32K tokens in 64-token pages): a branch-free pass the compiler vectorises answers the common
/// case (23 -> 3.4 us on the 2-core development machine, 2026-12-07), and only a table with a
/// bad entry is searched again for its position. The one page-id rule: the launch check and the
/// runtime's `set_block_table` (host and device caches) all ask it.
pub fn first_bad_page(row: &[i32], num_pages: usize) -> Option<usize> {
    // As u32 a negative entry is at least 2^31, and no page at or past 2^31 can be named.
    let limit = num_pages.min(1 << 31) as u32;
    let bad = row.iter().fold(false, |bad, &p| bad | (p as u32 >= limit));
    if bad {
        row.iter().position(|&p| p as u32 >= limit)
    } else {
        None
    }
}

#[allow(clippy::too_many_arguments)]
fn check_paged(
    name: &str,
    want_row: usize,
    row: usize,
    num_pages: usize,
    page_size: usize,
    batch: usize,
    pages_per_seq: usize,
    block_table: Option<&[i32]>,
    seq_lens: Option<&[i32]>,
) -> Result<(), LaunchError> {
    let err = |why: String| LaunchError::Paged {
        param: name.to_string(),
        why,
    };
    if row != want_row {
        return Err(err(format!(
            "rows have {row} elements, the kernel expects {want_row}"
        )));
    }
    if page_size == 0 {
        return Err(err("page size 0".into()));
    }
    if let Some(bt) = block_table {
        if bt.len() != batch * pages_per_seq {
            return Err(err(format!(
                "block table has {} entries, expected {batch} x {pages_per_seq}",
                bt.len()
            )));
        }
    }
    if let Some(lens) = seq_lens {
        if lens.len() != batch {
            return Err(err(format!(
                "{} sequence lengths for a batch of {batch}",
                lens.len()
            )));
        }
        let capacity = pages_per_seq * page_size;
        for (b, &len) in lens.iter().enumerate() {
            if len < 0 {
                return Err(err(format!(
                    "sequence {b} has length {len}, which is negative"
                )));
            }
            if len as usize > capacity {
                return Err(err(format!(
                    "sequence {b} has length {len}, beyond the block table's {capacity} tokens"
                )));
            }
            if let Some(bt) = block_table {
                let used = (len as usize).div_ceil(page_size);
                let row = &bt[b * pages_per_seq..b * pages_per_seq + used];
                if let Some(j) = first_bad_page(row, num_pages) {
                    return Err(err(format!(
                        "block_table[{b}][{j}] = {}, but there are {num_pages} pages",
                        row[j]
                    )));
                }
            }
        }
    }
    Ok(())
}

fn describe(k: &ParamKind) -> String {
    match k {
        ParamKind::Tensor {
            dtype,
            dims,
            writable,
        } => format!(
            "a {}tensor of {dtype} with rank {}",
            if *writable { "writable " } else { "" },
            dims.len()
        ),
        ParamKind::Paged {
            dtype,
            row,
            writable,
            ..
        } => format!(
            "a {}paged cache of {dtype} rows of {row}",
            if *writable { "writable " } else { "" }
        ),
        ParamKind::Scalar { dtype } => format!("an {dtype} scalar"),
    }
}

fn describe_arg(a: &ArgDesc<'_>) -> String {
    match a {
        ArgDesc::Tensor { dtype, shape, .. } => format!("a tensor of {dtype} with shape {shape:?}"),
        ArgDesc::Paged { dtype, .. } => format!("a paged cache of {dtype}"),
        ArgDesc::F32(_) => "an f32 scalar".into(),
        ArgDesc::I32(_) => "an i32 scalar".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_paged, first_bad_page};

    /// `check_paged` for one sequence of a 2-page table of 4-token pages (capacity 8).
    fn lens_error(len: i32) -> Option<String> {
        check_paged("cache", 8, 8, 4, 4, 1, 2, Some(&[0, 1]), Some(&[len]))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_negative_length_is_named_as_such_and_a_long_one_by_the_capacity() {
        assert_eq!(lens_error(8), None);
        let neg = lens_error(-1).expect("a negative length is an error");
        assert!(
            neg.contains("sequence 0 has length -1, which is negative"),
            "{neg}"
        );
        let long = lens_error(9).expect("a length past the table is an error");
        assert!(
            long.contains("length 9, beyond the block table's 8 tokens"),
            "{long}"
        );
    }

    #[test]
    fn a_bad_block_table_entry_is_named_by_its_position_and_unused_ones_are_not_read() {
        // 2 sequences x 3 pages of 4 tokens, 5 pages in the pool.
        let check = |bt: &[i32], lens: &[i32]| {
            check_paged("cache", 8, 8, 5, 4, 2, 3, Some(bt), Some(lens))
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(check(&[0, 1, 2, 3, 4, 0], &[12, 12]), None);
        let past = check(&[0, 1, 2, 3, 5, 0], &[12, 12]).expect("page 5 of 5 is an error");
        assert!(
            past.contains("block_table[1][1] = 5, but there are 5 pages"),
            "{past}"
        );
        let neg = check(&[0, -1, 2, 3, 4, 0], &[12, 12]).expect("a negative page is an error");
        assert!(
            neg.contains("block_table[0][1] = -1, but there are 5 pages"),
            "{neg}"
        );
        // Entries past a sequence's length are never read, so they may hold anything.
        assert_eq!(check(&[0, 1, -7, 3, 99, 99], &[5, 4]), None);
        // The vectorised pass and the search agree on the first bad entry, wherever it is.
        let mut row: Vec<i32> = (0..1000).map(|i| i % 50).collect();
        assert_eq!(first_bad_page(&row, 50), None);
        for (at, bad) in [(0, 50), (517, i32::MIN), (999, -1), (64, i32::MAX)] {
            let keep = row[at];
            row[at] = bad;
            assert_eq!(first_bad_page(&row, 50), Some(at), "entry {at} = {bad}");
            row[at] = keep;
        }
        // A pool of 2^31 pages or more takes every non-negative entry.
        assert_eq!(first_bad_page(&[i32::MAX, 0], 1 << 32), None);
        assert_eq!(first_bad_page(&[i32::MAX, -1], 1 << 32), Some(1));
    }
}
