//! Tests of the executor interface (`exec.rs`).

use super::*;

fn geometry(batch: usize) -> PagedGeometry {
    PagedGeometry {
        dtype: DType::BF16,
        num_pages: 4,
        page_size: 16,
        row: 8,
        batch,
        pages_per_seq: 2,
    }
}

#[test]
fn a_split_table_must_be_i32_read_only_same_space_and_cover_the_batch() {
    let (pool, bt, lens) = (vec![0u16; 4 * 16 * 8], vec![0i32; 6], vec![0i32; 3]);
    let (table, floats) = (vec![16i32; 3], vec![0f32; 3]);
    // SAFETY: host buffers of the stated sizes, alive for the whole test, never launched.
    let (paged, t, short, f, w, dev) = unsafe {
        let p = PagedArg::new(
            pool.as_ptr() as u64,
            bt.as_ptr() as u64,
            lens.as_ptr() as u64,
            geometry(3),
            Some((&bt, &lens)),
            false,
            ArgSpace::Host,
        );
        let a = table.as_ptr() as u64;
        (
            p,
            TensorArg::new(a, DType::I32, &[3], false, ArgSpace::Host),
            TensorArg::new(a, DType::I32, &[2], false, ArgSpace::Host),
            TensorArg::new(
                floats.as_ptr() as u64,
                DType::F32,
                &[3],
                false,
                ArgSpace::Host,
            ),
            TensorArg::new(a, DType::I32, &[3], true, ArgSpace::Host),
            TensorArg::new(a, DType::I32, &[3], false, ArgSpace::Device),
        )
    };
    assert!(paged.split_table().is_none());
    let with = paged.with_split_table(t).unwrap();
    assert_eq!(with.split_table().map(|t| t.ptr()), Some(t.ptr()));
    assert!(matches!(
        KernelArg::Paged(with).desc(),
        ArgDesc::Paged { chunks: true, .. }
    ));
    assert!(matches!(
        KernelArg::Paged(paged).desc(),
        ArgDesc::Paged { chunks: false, .. }
    ));
    for (bad, why) in [
        (short, "2 entries"),
        (f, "not i32"),
        (w, "for writing"),
        (dev, "Device"),
    ] {
        let e = paged.with_split_table(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    // A one-sequence view drops the table (it is indexed by the whole batch).
    assert!(with.sequence(1).unwrap().split_table().is_none());
    // The lengths as a tensor: at most `batch` of them.
    let s = [3];
    let l = paged.seq_lens_arg(&s).unwrap();
    assert_eq!(
        (l.ptr(), l.dtype(), l.writable()),
        (lens.as_ptr() as u64, DType::I32, false)
    );
    assert!(paged.seq_lens_arg(&[4]).is_err());
}
